"""The decoder child's reply format, and its validation: nothing from the child is trusted.

The child (`appliance.io.sandbox_child`) parses hostile files; if a decoder bug let a
file take it over, what it sends back must still be unable to harm the node. So nothing
is unpickled: every message is a length-prefixed byte string (8-byte little-endian
length, then the payload), and the parent accepts only

* a JSON header: ``{"ok": true, "meta": {...ImageMeta fields...}, "frames": [[rows,
  cols], ...]}`` followed by one raw message per frame of exactly rows x cols uint8
  bytes, or
* a JSON refusal: ``{"ok": false, "code": "<InputError code>", "reason": "...",
  "modality": "..."}``, rebuilt from a fixed whitelist of `InputError` classes; or
  ``{"ok": false, "code": "out_of_memory"}`` / ``{"ok": false, "code": "internal",
  "type": "ValueError"}``.

`parse_header` and `parse_refusal` check every field's type, length and range and raise
`WireError` on anything else (the parent then rejects the input: the decoder returned
something no honest decoder does).
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
from pathlib import Path
from typing import Any

from appliance.errors import (
    CorruptFileError,
    EmptyFileError,
    ImageTooLargeError,
    InputError,
    InputTooCostlyError,
    NoContentError,
    NoPixelDataError,
    NotRegularFileError,
    NotUltrasoundError,
    UnreadableFileError,
    UnsupportedFormatError,
)
from appliance.io.images import MAX_SIDE
from appliance.io.types import ImageMeta, LoadedImage, ReadLimits

LENGTH = struct.Struct("<Q")
MAX_HEADER_BYTES = 1 << 20
MAX_TEXT = 4096  # longest string field accepted (a reason, a note, a UID, a name)
MAX_NOTES = 64
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_INPUT_ERRORS: dict[str, type[InputError]] = {
    cls.code: cls
    for cls in (
        EmptyFileError, UnreadableFileError, UnsupportedFormatError, CorruptFileError,
        NoPixelDataError, ImageTooLargeError, InputTooCostlyError, NoContentError,
        NotRegularFileError,
    )
}  # fmt: skip
_TEXT_FIELDS = (
    "source_format", "modality", "sop_instance_uid", "sop_class_uid", "study_instance_uid",
    "series_instance_uid", "patient_id", "patient_name", "study_date", "manufacturer",
    "model_name", "photometric",
)  # fmt: skip
_FORMATS = {"dicom", "png", "jpeg", "bmp"}


class WireError(Exception):
    """The child sent something outside the format: treated as a compromised decoder."""


def frame_message(payload: bytes | memoryview) -> bytes:
    """The length prefix of a message (sent before the payload itself)."""
    return LENGTH.pack(len(payload))


# --- child side ---------------------------------------------------------------------------


def header_for(loaded: LoadedImage) -> bytes:
    """The JSON header describing `loaded` (its frames follow as raw messages)."""
    meta = dataclasses.asdict(loaded.meta)
    frames = [[int(f.shape[0]), int(f.shape[1])] for f in loaded.frames]
    return json.dumps({"ok": True, "meta": meta, "frames": frames}).encode()


def refusal_for(exc: InputError) -> bytes:
    """The JSON refusal for an `InputError` raised while reading."""
    body: dict[str, Any] = {"ok": False, "code": exc.code, "reason": exc.reason}
    if isinstance(exc, NotUltrasoundError):
        body["modality"] = exc.modality
    return json.dumps(body).encode()


def failure_for(code: str, exc: BaseException | None = None) -> bytes:
    """`out_of_memory`, or `internal` with the exception's type name (never its message)."""
    body: dict[str, Any] = {"ok": False, "code": code}
    if exc is not None:
        body["type"] = type(exc).__name__
    return json.dumps(body).encode()


# --- parent side --------------------------------------------------------------------------


def loads(payload: bytes) -> dict[str, Any]:
    """The JSON object of a header or refusal message."""
    if len(payload) > MAX_HEADER_BYTES:
        raise WireError(f"header of {len(payload)} bytes")
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise WireError("header is not JSON") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("ok"), bool):
        raise WireError("header is not an object with 'ok'")
    return obj


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise WireError(f"{field} is not a string of at most {MAX_TEXT} characters")
    return _CONTROL.sub(" ", value)  # no newline or terminal escape reaches a log


def _int(value: Any, field: str, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise WireError(f"{field} is not an integer in {lo}..{hi}")
    return value


def _meta(obj: Any, n_frames: int) -> ImageMeta:
    if not isinstance(obj, dict) or set(obj) != {f.name for f in dataclasses.fields(ImageMeta)}:
        raise WireError("meta does not have exactly the ImageMeta fields")
    values: dict[str, Any] = {}
    for name in _TEXT_FIELDS:
        values[name] = None if obj[name] is None else _text(obj[name], name)
    if values["source_format"] not in _FORMATS:
        raise WireError("source_format is not a known format")
    values["bits_stored"] = (
        None if obj["bits_stored"] is None else _int(obj["bits_stored"], "bits_stored", 1, 64)
    )
    spacing = obj["pixel_spacing_mm"]
    if spacing is not None:
        if not (isinstance(spacing, list) and len(spacing) == 2):
            raise WireError("pixel_spacing_mm is not a pair")
        if not all(type(v) is float and 0 < v < 1e6 for v in spacing):
            raise WireError("pixel_spacing_mm is not positive floats")
        spacing = (spacing[0], spacing[1])
    values["pixel_spacing_mm"] = spacing
    crop = obj["crop"]
    if crop is not None:
        if not (isinstance(crop, list) and len(crop) == 4):
            raise WireError("crop is not four integers")
        crop = tuple(_int(v, "crop", 0, MAX_SIDE) for v in crop)
    values["crop"] = crop
    total = _int(obj["n_frames_total"], "n_frames_total", 1, 1 << 31)
    values["n_frames_total"] = total
    indices = obj["frame_indices"]
    if not isinstance(indices, list) or len(indices) != n_frames:
        raise WireError("frame_indices does not match the frames")
    values["frame_indices"] = tuple(_int(i, "frame_indices", 0, total - 1) for i in indices)
    notes = obj["notes"]
    if not isinstance(notes, list) or len(notes) > MAX_NOTES:
        raise WireError("notes is not a short list")
    values["notes"] = tuple(_text(n, "notes") for n in notes)
    return ImageMeta(**values)


def parse_header(
    obj: dict[str, Any], limits: ReadLimits
) -> tuple[ImageMeta, list[tuple[int, int]]]:
    """The metadata and frame shapes of an `ok` header, within `limits`."""
    frames = obj.get("frames")
    if set(obj) != {"ok", "meta", "frames"} or not isinstance(frames, list):
        raise WireError("header does not have exactly ok, meta, frames")
    if not 1 <= len(frames) <= limits.max_frames:
        raise WireError(f"{len(frames)} frames, limit {limits.max_frames}")
    shapes: list[tuple[int, int]] = []
    for shape in frames:
        if not (isinstance(shape, list) and len(shape) == 2):
            raise WireError("a frame shape is not [rows, cols]")
        shapes.append((_int(shape[0], "rows", 1, MAX_SIDE), _int(shape[1], "cols", 1, MAX_SIDE)))
    if sum(r * c for r, c in shapes) > limits.max_pixels:
        raise WireError("frames hold more pixels than max_pixels")
    return _meta(obj["meta"], len(shapes)), shapes


def parse_refusal(obj: dict[str, Any], path: Path) -> InputError:
    """The `InputError` a refusal stands for, from the whitelist."""
    code = obj.get("code")
    reason = _text(obj.get("reason"), "reason")
    if code == NotUltrasoundError.code:
        modality = _text(obj.get("modality"), "modality")[:16]
        return NotUltrasoundError(reason, modality=modality, path=path)
    cls = _INPUT_ERRORS.get(code) if isinstance(code, str) else None
    if cls is None:
        raise WireError("refusal with an unknown code")
    return cls(reason, path=path)
