"""The decoder child's replies are validated, never trusted (issue 8 item 4, security)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from appliance.errors import CorruptFileError, NotUltrasoundError
from appliance.io.types import ImageMeta, LoadedImage, ReadLimits
from appliance.io.wire import (
    WireError,
    failure_for,
    header_for,
    loads,
    parse_header,
    parse_refusal,
    refusal_for,
)

PATH = Path("/spool/ab12")


def good_header() -> dict[str, Any]:
    meta = ImageMeta(source_format="dicom", modality="US", pixel_spacing_mm=(0.1, 0.1),
                     crop=(0, 0, 40, 30), n_frames_total=3, frame_indices=(0, 2),
                     notes=("frames sampled: 2 of 3",))  # fmt: skip
    frames = [np.zeros((30, 40), np.uint8)] * 2
    return loads(header_for(LoadedImage(frames=frames, meta=meta)))


def test_a_header_round_trips() -> None:
    meta, shapes = parse_header(good_header(), ReadLimits())
    assert shapes == [(30, 40), (30, 40)]
    assert meta.crop == (0, 0, 40, 30) and meta.frame_indices == (0, 2)
    assert meta.pixel_spacing_mm == (0.1, 0.1) and meta.notes == ("frames sampled: 2 of 3",)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h: h.update(extra=1),
        lambda h: h["meta"].update(shell="rm -rf /"),
        lambda h: h.update(frames=[[30, 40]] * 17),  # more than max_frames
        lambda h: h.update(frames=[[30000, 30000], [30, 40]]),  # more than max_pixels
        lambda h: h.update(frames=[[0, 40], [30, 40]]),
        lambda h: h.update(frames=[[30.5, 40], [30, 40]]),
        lambda h: h["meta"].update(frame_indices=[0]),
        lambda h: h["meta"].update(frame_indices=[0, 7]),  # beyond n_frames_total
        lambda h: h["meta"].update(patient_name="x" * 5000),
        lambda h: h["meta"].update(source_format="exe"),
        lambda h: h["meta"].update(pixel_spacing_mm=[-1.0, 0.1]),
        lambda h: h["meta"].update(notes=["n"] * 65),
        lambda h: h["meta"].update(bits_stored=True),
    ],
)
def test_a_tampered_header_is_refused(tamper: Any) -> None:
    header = good_header()
    tamper(header)
    with pytest.raises(WireError):
        parse_header(header, ReadLimits())


def test_control_characters_never_pass() -> None:
    header = good_header()
    header["meta"]["patient_name"] = "Doe^Jane\x1b[2J\nFAKE LOG LINE"
    meta, _ = parse_header(header, ReadLimits())
    assert meta.patient_name == "Doe^Jane [2J FAKE LOG LINE"


def test_refusals_are_rebuilt_from_the_whitelist() -> None:
    exc = parse_refusal(loads(refusal_for(CorruptFileError("damaged: export again"))), PATH)
    assert type(exc) is CorruptFileError and exc.reason == "damaged: export again"
    assert exc.path == PATH
    ct = NotUltrasoundError("modality CT", modality="CT")
    rebuilt = parse_refusal(loads(refusal_for(ct)), PATH)
    assert isinstance(rebuilt, NotUltrasoundError) and rebuilt.modality == "CT"
    with pytest.raises(WireError):
        parse_refusal({"ok": False, "code": "SystemExit", "reason": "x"}, PATH)
    with pytest.raises(WireError):
        parse_refusal({"ok": False, "code": "corrupt", "reason": 42}, PATH)


def test_loads_refuses_what_is_not_a_small_json_object() -> None:
    for payload in (b"\x80\x04pickle", b"[1, 2]", b'{"ok": 1}', b"[" * 100_000):
        with pytest.raises(WireError):
            loads(payload)
    with pytest.raises(WireError):
        loads(b" " * (2 << 20))
    assert json.loads(failure_for("internal", ValueError("secret"))) == {
        "ok": False, "code": "internal", "type": "ValueError"
    }  # fmt: skip


def test_meta_fields_are_the_wire_fields() -> None:
    assert {f.name for f in dataclasses.fields(ImageMeta)} == set(good_header()["meta"])
