"""The sender against a real pynetdicom Storage SCP over TCP, on a real SQLite queue, with
the node's real SEG / SR files: sent, refused, warned, unreachable, rejected, gone."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest

from appliance.dicom_send.sender import DicomSender
from appliance.store.outbound import Outbound, OutboundQueue
from tests.appliance.dicom_send.sendutil import (
    Clock,
    PacsScp,
    copy_objects,
    free_port,
    make_objects,
    queue_done_job,
    send_config,
)


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_objects(tmp_path_factory.mktemp("objects"))


def _setup(tmp_path: Path, objects: list[Path], **config: object) -> tuple[DicomSender, Path, int]:
    port = free_port()
    cfg = send_config(port, **config)
    db = tmp_path / "node.sqlite3"
    files = copy_objects(objects, tmp_path / "outbox")
    job = queue_done_job(db, files, cfg.destination())
    return DicomSender(cfg, db, clock=Clock()), db, job


def _rows(db: Path) -> dict[str, Outbound]:
    with OutboundQueue(db) as q:
        return {r.kind: r for r in q.list_objects()}


def test_a_jobs_seg_and_sr_are_stored_by_the_pacs_and_marked_sent(
    tmp_path: Path, objects: list[Path]
) -> None:
    sender, db, _ = _setup(tmp_path, objects)
    with PacsScp(sender.config.port) as pacs:
        report = sender.send_due()
    assert report.sent == 2 and report.total == 2
    expected = {str(pydicom.dcmread(p).SOPInstanceUID) for p in objects}
    assert sorted(pacs.uids()) == sorted(expected)
    seg = next(ds for ds in pacs.received if ds.Modality == "SEG")
    local = pydicom.dcmread(tmp_path / "outbox" / objects[0].name)
    assert seg.PixelData == local.PixelData  # the bytes on disk, not re-encoded
    with OutboundQueue(db) as q:
        rows = q.list_objects()
        assert {r.status for r in rows} == {"sent"} and all(r.sent_at for r in rows)
        assert q.counts() == {"pending": 0, "sent": 2, "failed": 0}
    assert sender.send_due().total == 0  # nothing is sent twice
    sender.stop()


def test_an_unreachable_pacs_is_waited_out_with_backoff_and_no_attempt_counted(
    tmp_path: Path, objects: list[Path]
) -> None:
    sender, db, _ = _setup(tmp_path, objects)  # nothing listens on the port yet
    clock = sender._clock
    assert isinstance(clock, Clock)
    start = clock.now
    assert sender.send_due().deferred == 2
    rows = _rows(db)
    for row in rows.values():
        assert row.status == "pending" and row.attempts == 0
        assert "cannot be reached" in str(row.last_error)
        assert (row.not_before - start).total_seconds() == pytest.approx(10)
    assert sender.send_due().total == 0  # not due yet
    clock.advance(10)
    sender.send_due()
    row = _rows(db)["seg"]
    assert (row.not_before - clock.now).total_seconds() == pytest.approx(20)
    clock.advance(20)
    with PacsScp(sender.config.port) as pacs:
        assert sender.send_due().sent == 2
    assert len(pacs.uids()) == 2 and len(set(pacs.uids())) == 2  # each exactly once
    assert {r.status for r in _rows(db).values()} == {"sent"}
    sender.stop()


def test_a_refused_object_is_retried_with_backoff_then_set_aside_and_retried_by_hand(
    tmp_path: Path, objects: list[Path]
) -> None:
    sender, db, _ = _setup(tmp_path, objects, max_attempts=2)
    clock = sender._clock
    assert isinstance(clock, Clock)
    with PacsScp(sender.config.port, status=0xA900) as pacs:
        first = sender.send_due()
        assert first.retried == 2 and pacs.uids() == []
        seg = _rows(db)["seg"]
        assert seg.attempts == 1 and seg.status == "pending"
        assert "0xA900 (Data Set Does Not Match SOP Class)" in str(seg.last_error)
        assert (seg.not_before - clock.now).total_seconds() == pytest.approx(10)
        clock.advance(10)
        assert sender.send_due().failed == 2
    rows = _rows(db)
    assert {r.status for r in rows.values()} == {"failed"}
    with OutboundQueue(db) as q:
        back = q.retry()
    assert len(back) == 2 and {r.attempts for r in back} == {0}
    with PacsScp(sender.config.port) as pacs:
        assert sender.send_due().sent == 2
    assert len(pacs.uids()) == 2
    sender.stop()


def test_a_warning_status_is_sent_with_the_warning_kept(
    tmp_path: Path, objects: list[Path]
) -> None:
    sender, db, _ = _setup(tmp_path, objects)
    with PacsScp(sender.config.port, status=0xB000):
        assert sender.send_due().sent == 2
    row = _rows(db)["seg"]
    assert row.status == "sent"
    assert "0xB000 (Coercion of Data Elements)" in str(row.last_error)
    sender.stop()


def test_a_pacs_that_rejects_the_node_ae_title_is_waited_out_and_says_so(
    tmp_path: Path, objects: list[Path]
) -> None:
    sender, db, _ = _setup(tmp_path, objects)
    with PacsScp(sender.config.port, callers=["SOMEONE_ELSE"]):
        assert sender.send_due().deferred == 2
    row = _rows(db)["sr"]
    assert row.status == "pending" and row.attempts == 0
    assert "rejected the association" in str(row.last_error)
    assert "Calling AE title not recognised" in str(row.last_error)
    sender.stop()


def test_a_missing_or_replaced_file_is_set_aside_at_once(
    tmp_path: Path, objects: list[Path]
) -> None:
    sender, db, _ = _setup(tmp_path, objects)
    seg_path, sr_path = sorted((tmp_path / "outbox").iterdir())
    seg_path.unlink()
    ds = pydicom.dcmread(sr_path)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.10.511.9"
    ds.save_as(sr_path, enforce_file_format=True)
    with PacsScp(sender.config.port) as pacs:
        assert sender.send_due().failed == 2
    assert pacs.uids() == []
    rows = _rows(db)
    assert "gone" in str(rows["seg"].last_error)
    assert "not the queued" in str(rows["sr"].last_error)
    sender.stop()


def test_the_thread_sends_by_itself_and_stops(tmp_path: Path, objects: list[Path]) -> None:
    sender, db, _ = _setup(tmp_path, objects, poll_interval_s=0.2)
    with PacsScp(sender.config.port) as pacs:
        sender.start()
        deadline = time.monotonic() + 20
        while len(pacs.uids()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        sender.stop(timeout=10)
    assert len(pacs.uids()) == 2
    assert {r.status for r in _rows(db).values()} == {"sent"}
