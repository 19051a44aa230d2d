"""The durable send queue on a real SQLite store: queued in the job's done transaction,
claimed when due, backoff, failure after max attempts, retry; the config that turns it on;
the pipeline queueing a real job's SEG / SR; `fame-node outbox list|retry`."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest

from appliance.cli import main
from appliance.config import load_config
from appliance.errors import ConfigError
from appliance.phantom import PhantomSpec, make_phantom
from appliance.phantom_dicom import write_phantom_dicom
from appliance.store import FrameResultRow, JobQueue, JobStateError, ResultStore, StoreError
from appliance.store.outbound import OutboundItem, OutboundQueue
from tests.appliance.dicom_send.sendutil import META, Clock, queue_done_job
from tests.appliance.pipelineutil import node_parts, process_file

DEST = "PACS@127.0.0.1:104"


def _items(tmp_path: Path) -> list[Path]:
    files = [tmp_path / "job-000001-seg.dcm", tmp_path / "job-000001-sr.dcm"]
    for f in files:
        f.write_bytes(b"x")
    return files


def test_rows_are_queued_with_the_done_job_and_not_without_it(tmp_path: Path) -> None:
    db = tmp_path / "n.sqlite3"
    job = queue_done_job(db, [], DEST)  # a job with nothing to send
    with JobQueue(db) as queue, ResultStore(db) as results, OutboundQueue(db) as out:
        assert out.list_objects() == []
        # A save that fails (the job is done, not running) queues nothing either.
        item = OutboundItem("seg", tmp_path / "job-000001-seg.dcm", "1.2.3", DEST)
        with pytest.raises(JobStateError):
            results.save_completed(job, META, [FrameResultRow(0, "benign", {}, 1.0)], "m", "c",
                                   outbound=[item])  # fmt: skip
        assert out.list_objects() == []
        assert queue.get(job).status == "done"
    with pytest.raises(ValueError, match="kind must be one of"):
        OutboundItem("png", tmp_path / "x", None, DEST)


def test_claim_backoff_failure_and_retry(tmp_path: Path) -> None:
    db = tmp_path / "n.sqlite3"
    files = _items(tmp_path)
    job = queue_done_job(db, [], DEST)
    clock = Clock()
    with OutboundQueue(db, clock=clock) as q:
        with q._db.write() as conn:  # as save_completed does, for this job
            from appliance.store.outbound import insert_outbound

            insert_outbound(
                conn,
                job,
                [
                    OutboundItem("seg", files[0], "1.1", DEST),
                    OutboundItem("sr", files[1], "1.2", "OTHER@h:1"),
                ],
                "2025-01-01T00:00:00.000000Z",
            )
        due = q.claim_due(DEST, 10)
        assert [r.kind for r in due] == ["seg"]  # only this destination's
        (seg,) = due
        after = q.mark_retry(seg.id, "refused 0xA900", delay_s=30, max_attempts=2)
        assert after.status == "pending" and after.attempts == 1
        assert after.not_before == clock.now + timedelta(seconds=30)
        assert q.claim_due(DEST, 10) == []  # waits
        assert q.next_due(DEST) == after.not_before
        clock.advance(30)
        assert [r.id for r in q.claim_due(DEST, 10)] == [seg.id]
        failed = q.mark_retry(seg.id, "refused again", delay_s=60, max_attempts=2)
        assert failed.status == "failed" and failed.last_error == "refused again"
        assert q.claim_due(DEST, 10) == [] and q.next_due(DEST) is None
        assert q.counts() == {"pending": 1, "sent": 0, "failed": 1}
        # defer moves the wait without counting an attempt
        (other,) = q.claim_due("OTHER@h:1", 1)
        assert q.defer([other.id], "unreachable", delay_s=5) == 1
        assert q.get(other.id).attempts == 0 and q.get(other.id).last_error == "unreachable"
        with pytest.raises(StoreError, match="is pending, not failed"):
            q.retry([other.id])
        with pytest.raises(StoreError, match="no outbound object has id 99"):
            q.retry([99])
        (back,) = q.retry()
        assert back.id == seg.id and back.status == "pending" and back.attempts == 0
        sent = q.mark_sent(seg.id, warning="0xB000")
        assert sent.status == "sent" and sent.sent_at == clock.now
        assert q.list_objects("sent") == [sent] and q.list_objects(job_id=job + 1) == []


def test_enabling_dicom_send_without_a_destination_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(env={"FAME_NODE_DICOM_SEND__ENABLED": "true"})
    text = str(err.value)
    assert "dicom_send.ae_title and host is not set" in text and "enabled = false" in text
    with pytest.raises(ConfigError, match=r"dicom_out\.enabled = false"):
        load_config(
            env={
                "FAME_NODE_DICOM_SEND__ENABLED": "true",
                "FAME_NODE_DICOM_SEND__AE_TITLE": "PACS",
                "FAME_NODE_DICOM_SEND__HOST": "pacs",
                "FAME_NODE_DICOM_OUT__ENABLED": "false",
            }
        )
    cfg = load_config(
        env={
            "FAME_NODE_DICOM_SEND__ENABLED": "true",
            "FAME_NODE_DICOM_SEND__AE_TITLE": "PACS",
            "FAME_NODE_DICOM_SEND__HOST": "pacs.example.org",
        }
    )
    assert cfg.dicom_send.queued_for() == "PACS@pacs.example.org:104"
    assert load_config(env={}).dicom_send.queued_for() is None


def test_the_pipeline_queues_a_dicom_jobs_seg_and_sr_only_when_sending(tmp_path: Path) -> None:
    source = tmp_path / "us.dcm"
    spec = PhantomSpec(height=200, width=260, semi_axes_px=(40, 30), seed=7)
    write_phantom_dicom(source, make_phantom(spec), pixel_spacing_mm=0.1, patient_id="P-1",
                        patient_name="A^B")  # fmt: skip
    send = {
        "FAME_NODE_DICOM_SEND__ENABLED": "true",
        "FAME_NODE_DICOM_SEND__AE_TITLE": "PACS",
        "FAME_NODE_DICOM_SEND__HOST": "127.0.0.1",
        "FAME_NODE_DICOM_SEND__PORT": "11999",
    }
    parts = node_parts(tmp_path / "node", workers=1, **send)
    try:
        job = process_file(parts, source)
    finally:
        parts.close()
    db = tmp_path / "node" / "fame-node.sqlite3"
    with OutboundQueue(db) as q:
        rows = sorted(q.list_objects(), key=lambda r: r.kind)
    assert [(r.kind, r.job_id, r.status, r.destination) for r in rows] == [
        ("seg", job, "pending", "PACS@127.0.0.1:11999"),
        ("sr", job, "pending", "PACS@127.0.0.1:11999"),
    ]
    for r in rows:  # the UID queued is the one in the file
        assert str(pydicom.dcmread(r.path, stop_before_pixels=True).SOPInstanceUID) == (
            r.sop_instance_uid
        )
    quiet = node_parts(tmp_path / "node2", workers=1)  # dicom_send off: nothing queued
    try:
        process_file(quiet, source)
    finally:
        quiet.close()
    with OutboundQueue(tmp_path / "node2" / "fame-node.sqlite3") as q:
        assert q.list_objects() == []


def test_outbox_list_and_retry_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[paths]\nroot = "{tmp_path}"\n')
    db = tmp_path / "fame-node.sqlite3"
    files = _items(tmp_path)
    queue_done_job(db, files, DEST)
    with OutboundQueue(db) as q:
        seg, sr = sorted(q.list_objects(), key=lambda r: r.kind)
        q.mark_retry(seg.id, "the PACS refused it: 0xC000 (Cannot Understand)", delay_s=1,
                     max_attempts=1)  # fmt: skip
        q.defer([sr.id], "the PACS PACS@127.0.0.1:104 cannot be reached", delay_s=60)
    assert main(["--config", str(config), "outbox", "list"]) == 0
    out = capsys.readouterr().out
    assert "dicom_send is disabled" in out
    assert "failed" in out and "0xC000 (Cannot Understand)" in out
    assert "pending" in out and "cannot be reached" in out and "next try" in out
    assert out.strip().endswith("pending 1, sent 0, failed 1")
    assert main(["--config", str(config), "outbox", "list", "--json", "--status", "failed"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["file"] == "job-000001-seg.dcm"
    assert main(["--config", str(config), "outbox", "retry", str(sr.id)]) == 1  # not failed
    assert "not failed" in capsys.readouterr().err
    assert main(["--config", str(config), "outbox", "retry", "--all"]) == 0
    assert "1 object(s) back in the send queue" in capsys.readouterr().out
    with OutboundQueue(db) as q:
        assert q.counts() == {"pending": 2, "sent": 0, "failed": 0}
