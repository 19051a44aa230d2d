"""The C-STORE receiver with real parts: a pynetdicom SCU pushes pydicom-data ultrasound
files over TCP on 127.0.0.1 into a receiver writing into a temporary inbox."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydantic import ValidationError
from pynetdicom import AE

from appliance.config import DicomNetConfig
from appliance.errors import ConfigError
from appliance.ingest.dicom_receiver import (
    INCOMING,
    STATUS_OUT_OF_RESOURCES,
    STORAGE_SOP_CLASSES,
    TRANSFER_SYNTAXES,
    DicomReceiver,
)
from appliance.ingest.watcher import is_candidate
from appliance.io.sample_data import ultrasound_sample_files

SAMPLES = ultrasound_sample_files()
pytestmark = pytest.mark.skipif(not SAMPLES, reason="pydicom-data is not installed")
# one of each transfer syntax the samples hold, all small: implicit / explicit LE,
# explicit BE, RLE, JPEG lossless, JPEG 2000, and the retired US SOP class (color-pl)
NAMES = (
    "OBXXXX1A_rle_2frame.dcm",
    "JPGLosslessP14SV1_1s_1f_8b.dcm",
    "US1_J2KI.dcm",
    "color-pl.dcm",
    "gdcm-US-ALOKA-16.dcm",
    "OBXXXX1A_expb.dcm",
)


def _sample(name: str) -> Path:
    return next(p for p in SAMPLES if p.name == name)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[DicomReceiver]:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cfg = DicomNetConfig(enabled=True, port=0, allowed_callers=("TESTSCU",))
    r = DicomReceiver(cfg, inbox, max_bytes=1 << 30)
    r.start()
    yield r
    r.stop()


def _scu(title: str = "TESTSCU") -> AE:
    ae = AE(ae_title=title)
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_requested_context(sop_class, list(TRANSFER_SYNTAXES)[:4])
    return ae


def _send(receiver: DicomReceiver, paths: list[Path], title: str = "TESTSCU") -> list[int]:
    """Push each file in its own transfer syntax; returns the statuses."""
    ae = AE(ae_title=title)
    datasets = [pydicom.dcmread(p) for p in paths]
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="FAMENODE")
    if not assoc.is_established:
        raise AssertionError("association not established")
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def _without_group_lengths(ds: pydicom.Dataset) -> pydicom.Dataset:
    # the SCU (pydicom's encoder) drops (gggg,0000) group lengths, deprecated since 2004
    for tag in [elem.tag for elem in ds if elem.tag.element == 0]:
        del ds[tag]
    return ds


def test_pushed_images_land_in_the_inbox_unchanged(receiver: DicomReceiver) -> None:
    for name in NAMES:  # one at a time: some samples share a SOP Instance UID
        before = {p for p in receiver.inbox.iterdir() if p.is_file()}
        assert _send(receiver, [_sample(name)]) == [0x0000], name
        new = {p for p in receiver.inbox.iterdir() if p.is_file()} - before
        assert len(new) == 1, name
        original = pydicom.dcmread(_sample(name))
        got = pydicom.dcmread(new.pop())
        assert got.SOPInstanceUID == original.SOPInstanceUID
        assert got.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert got.PixelData == original.PixelData
        assert _without_group_lengths(got) == _without_group_lengths(original), name
    stored = [p for p in receiver.inbox.iterdir() if p.is_file()]
    assert len(stored) == len(NAMES)
    for p in stored:
        # a random name: nothing from the dataset, and one the watcher takes
        assert p.name.startswith("dicom-") and p.suffix == ".dcm" and len(p.stem) == 6 + 32
        assert is_candidate(p, receiver.inbox)
    assert list((receiver.inbox / INCOMING).iterdir()) == []
    assert not is_candidate(receiver.inbox / INCOMING / "x.dcm", receiver.inbox)


def test_an_unknown_caller_is_rejected_and_logged(
    receiver: DicomReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fame_node.dicom_net")
    assoc = _scu("INTRUDER").associate("127.0.0.1", receiver.port, ae_title="FAMENODE")
    assert assoc.is_rejected
    assert [p for p in receiver.inbox.iterdir() if p.is_file()] == []

    def logged() -> bool:
        return any(
            "'INTRUDER'" in r.getMessage() and "allowed_callers" in r.getMessage()
            for r in caplog.records
        )

    # pynetdicom fires EVT_REJECTED on its own thread after the rejection is sent, so the
    # caller can see the rejection before the node's warning is written.
    deadline = time.monotonic() + 5.0
    while not logged() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert logged()


def test_a_dataset_over_the_size_limit_is_refused_and_not_stored(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cfg = DicomNetConfig(enabled=True, port=0, allowed_callers=("TESTSCU",))
    r = DicomReceiver(cfg, inbox, max_bytes=1024)
    r.start()
    try:
        assert _send(r, [_sample("OBXXXX1A_rle_2frame.dcm")]) == [STATUS_OUT_OF_RESOURCES]
    finally:
        r.stop()
    assert [p for p in inbox.iterdir() if p.is_file()] == []
    assert list((inbox / INCOMING).iterdir()) == []


def test_a_write_failure_answers_out_of_resources_and_leaves_nothing(
    receiver: DicomReceiver,
) -> None:
    incoming = receiver.inbox / INCOMING
    incoming.rmdir()
    incoming.write_bytes(b"")  # not a folder: even root cannot write the temp file
    assert _send(receiver, [_sample("US1_J2KI.dcm")]) == [STATUS_OUT_OF_RESOURCES]
    assert [p for p in receiver.inbox.iterdir() if p.is_file() and p != incoming] == []


def test_store_failure_removes_the_temp_file(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    (inbox / INCOMING).mkdir(parents=True)
    r = DicomReceiver(DicomNetConfig(), inbox, max_bytes=1 << 20)
    name = r.store(b"x" * 10)
    assert (inbox / name).read_bytes() == b"x" * 10
    # the inbox replaced by a file: the rename fails after the temp file was written
    (inbox / name).unlink()
    broken = DicomReceiver(DicomNetConfig(), inbox / name, max_bytes=1 << 20)
    broken.incoming = inbox / INCOMING
    with pytest.raises(OSError):
        broken.store(b"y" * 10)
    assert list((inbox / INCOMING).iterdir()) == []


def test_leftovers_of_a_crash_are_cleared_at_start(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    (inbox / INCOMING).mkdir(parents=True)
    (inbox / INCOMING / "deadbeef.dcm").write_bytes(b"half")
    r = DicomReceiver(DicomNetConfig(port=0, allow_any_caller=True), inbox, max_bytes=1 << 20)
    r.start()
    r.stop()
    assert list((inbox / INCOMING).iterdir()) == []


def test_enabled_without_callers_is_a_config_error() -> None:
    from appliance.config import load_config

    with pytest.raises(ConfigError, match="allowed_callers"):
        load_config(env={"FAME_NODE_DICOM_NET__ENABLED": "true"})
    cfg = load_config(
        env={
            "FAME_NODE_DICOM_NET__ENABLED": "true",
            "FAME_NODE_DICOM_NET__ALLOWED_CALLERS": '["US_ROOM1", "PACS"]',
        }
    )
    assert cfg.dicom_net.allowed_callers == ("US_ROOM1", "PACS")
    assert cfg.dicom_net.bind_address == "127.0.0.1"
    with pytest.raises(ValidationError, match="AE title"):
        DicomNetConfig(allowed_callers=("X" * 17,))
