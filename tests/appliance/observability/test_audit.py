"""The audit log: hash chain, append-only, written with the change it records, readable,
and verification that names the first row that was tampered with."""

from __future__ import annotations

import itertools
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.config import NodeConfig
from appliance.store import audit
from appliance.store.audit import GENESIS, AuditLog, entry_digest
from appliance.store.audit_events import FederationAudit
from appliance.store.db import Database, StoreError
from appliance.store.jobs import JobQueue
from appliance.store.model_events import ModelEventStore
from appliance.store.reviews import ReviewStore
from tests.appliance.app.nodedata import add_done_job, node_config

SHA = "ab" * 32


@pytest.fixture
def node(tmp_path: Path) -> NodeConfig:
    return node_config(tmp_path / "node")


def _rows(db: Path) -> list[sqlite3.Row]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM audit ORDER BY id").fetchall()
    finally:
        conn.close()


def test_rows_chain_by_sha256_from_genesis(tmp_path: Path) -> None:
    db = Database(tmp_path / "s.sqlite3")
    with db.write() as conn:
        first = audit.append(conn, "node", "result", "job:1", {"job": 1, "b": [1, 2]})
        second = audit.append(conn, "alice", "review", "job:1 frame:0", {"decision": "x"})
    db.close()
    assert first.prev_sha256 == GENESIS and second.prev_sha256 == first.sha256
    (r1, r2) = _rows(tmp_path / "s.sqlite3")
    # The digest is over the stored columns, detail in its canonical form (sorted keys).
    assert r1["detail"] == '{"b":[1,2],"job":1}'
    assert r1["sha256"] == entry_digest(GENESIS, r1["at"], "node", "result", "job:1", r1["detail"])
    assert r2["prev_sha256"] == r1["sha256"]


def test_append_refuses_to_run_outside_a_transaction(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "s.sqlite3", isolation_level=None)
    Database(tmp_path / "s.sqlite3").close()  # create the schema
    with pytest.raises(ValueError, match="inside the caller's write transaction"):
        audit.append(conn, "node", "result", "job:1", {})
    conn.close()


@pytest.mark.parametrize(
    ("detail", "word"),
    [
        ({"patient_id": "PID-1"}, "patient_id"),
        ({"file_name": "x"}, "file_name"),
        ({"path": "a"}, "'path'"),
        ({"note": "seen before"}, "'note'"),
        ({"source": "/srv/inbox/DOE_JANE.dcm"}, "looks like a path"),
        ({"source": "DOE_JANE.dcm"}, "looks like a path"),
        ({"nested": {"patient_name": "Doe^Jane"}}, "patient_name"),
        ({"x": float("nan")}, "finite"),
        ({"x": b"bytes"}, "bytes cannot be recorded"),
    ],
)
def test_detail_that_could_carry_patient_data_or_file_names_is_refused(
    tmp_path: Path, detail: dict[str, object], word: str
) -> None:
    db = Database(tmp_path / "s.sqlite3")
    with pytest.raises(ValueError, match=word), db.write() as conn:
        audit.append(conn, "node", "result", "job:1", detail)
    with db.read() as conn:
        assert audit.verify(conn).rows == 0  # nothing was written
    db.close()


def test_the_table_is_append_only(tmp_path: Path) -> None:
    db = Database(tmp_path / "s.sqlite3")
    with db.write() as conn:
        audit.append(conn, "node", "result", "job:1", {"job": 1})
    for statement in ("UPDATE audit SET actor = 'mallory'", "DELETE FROM audit"):
        with pytest.raises(StoreError, match="append-only"), db.write() as conn:
            conn.execute(statement)
    db.close()


def test_an_audit_row_commits_with_its_change_or_not_at_all(node: NodeConfig) -> None:
    queue = JobQueue(node.database_path)
    job = queue.enqueue(node.folder("inbox") / "a.png", SHA, 10).job
    queue.claim(job.id)
    # A failing write rolls back the audit row it wrote too: no entry for a change that
    # did not happen.
    with pytest.raises(RuntimeError), queue._db.write() as conn:
        audit.append(conn, "node", "job_rejected", f"job:{job.id}", {"job": job.id})
        raise RuntimeError("the change failed")
    assert AuditLog(node.database_path).read() == []
    queue.mark_rejected(job.id, "not_an_image", "content is not an image")
    (entry,) = AuditLog(node.database_path).read()
    assert (entry.action, entry.subject) == ("job_rejected", f"job:{job.id}")
    assert entry.detail == {
        "job": job.id,
        "sha256": SHA,
        "error_code": "not_an_image",
        "attempts": 1,
    }
    queue.close()


def test_results_rejections_failures_reviews_and_models_are_recorded(node: NodeConfig) -> None:
    done = add_done_job(node, "DOE_JANE_1.png", diagnosis="malignant", confidence=0.8)
    with JobQueue(node.database_path) as queue:
        rejected = queue.record_rejected(node.folder("inbox") / "x.png", "unreadable", "gone")
        failed = queue.enqueue(node.folder("inbox") / "b.png", SHA, 3).job
        queue.claim(failed.id)
        queue.mark_failed(failed.id, "internal_error", "boom")
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    tick = itertools.count()
    clock = lambda: t0 + timedelta(minutes=next(tick))  # noqa: E731
    with ReviewStore(node.database_path, clock=clock) as reviews:
        review = reviews.correct_diagnosis(done, 0, "benign", "dr alice", note="Doe said...")
        reviews.undo(review.id, by="dr bob")
    with ModelEventStore(node.database_path) as events:
        events.record(
            "fame@2.0",
            "activated",
            "it-admin",
            reason="/srv/x: better AUC",
            figures={"auc": 0.9, "label": "text", "nested": {"dice": 0.7}},
        )
    log = AuditLog(node.database_path)
    entries = log.read()
    assert [e.action for e in entries] == [
        "result",
        "job_rejected",
        "job_failed",
        "review",
        "review_undone",
        "model_activated",
    ]
    result = entries[0]
    assert result.subject == f"job:{done}" and result.actor == "node"
    assert result.detail["frames"] == [
        {"frame": 0, "diagnosis": "malignant", "confidence": 0.8, "lesions": 1, "flags": []}
    ]
    assert entries[1].detail["error_code"] == "unreadable" and entries[1].subject == (
        f"job:{rejected.id}"
    )
    assert entries[2].detail["error_code"] == "internal_error"
    assert entries[3].actor == "dr alice"
    assert entries[3].detail == {
        "review": review.id,
        "job": done,
        "frame": 0,
        "decision": "corrected",
        "diagnosis": "benign",
        "mask_redrawn": False,
        "with_note": True,
    }
    assert (entries[4].actor, entries[4].detail["review"]) == ("dr bob", review.id)
    model = entries[5]
    assert (model.actor, model.subject) == ("it-admin", "model:fame@2.0")
    assert model.detail["figures"] == {"auc": 0.9, "nested": {"dice": 0.7}}
    assert model.detail["with_reason"] is True
    # Nothing of a patient, a file name or a note reached the log.
    text = "".join(r["detail"] + (r["subject"] or "") for r in _rows(node.database_path))
    for secret in ("DOE", "Doe", "PID-0001", ".png", "/srv", "said"):
        assert secret not in text
    assert log.verify().ok and log.verify().rows == 6


def test_read_filters_by_time_and_action_and_keeps_the_newest(tmp_path: Path) -> None:
    db = Database(tmp_path / "s.sqlite3")
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    with db.write() as conn:
        for i in range(5):
            at = audit.to_db_time(t0 + timedelta(hours=i))
            audit.append(conn, "node", "result" if i % 2 else "review", f"job:{i}", {}, at=at)
    db.close()
    log = AuditLog(tmp_path / "s.sqlite3")
    assert [e.subject for e in log.read(action="review")] == ["job:0", "job:2", "job:4"]
    assert [e.subject for e in log.read(since=t0 + timedelta(hours=3))] == ["job:3", "job:4"]
    assert [e.subject for e in log.read(limit=2)] == ["job:3", "job:4"]
    with pytest.raises(ValueError, match="audit action"):
        log.read(action="DROP TABLE")


def _tampered_copy(src: Path, dst: Path, sql: str) -> Path:
    """A copy of the store whose audit rows were changed behind the triggers' back."""
    shutil.copy(src, dst)
    conn = sqlite3.connect(dst, isolation_level=None)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("DROP TRIGGER audit_no_delete")
    conn.execute(sql)
    conn.close()
    return dst


def _three_rows(tmp_path: Path) -> Path:
    db_path = tmp_path / "s.sqlite3"
    db = Database(db_path)
    with db.write() as conn:
        for i in (1, 2, 3):
            audit.append(conn, "node", "result", f"job:{i}", {"diagnosis": "benign", "job": i})
    db.close()  # the last connection: SQLite checkpoints, the file holds every row
    return db_path


def test_verify_names_the_first_changed_row(tmp_path: Path) -> None:
    src = _three_rows(tmp_path)
    assert AuditLog(src).verify().ok
    bad = _tampered_copy(
        src,
        tmp_path / "bad.sqlite3",
        """UPDATE audit SET detail = '{"diagnosis":"malignant","job":2}' WHERE id = 2""",
    )
    report = AuditLog(bad).verify()
    assert not report.ok and report.broken_id == 2 and "was changed" in (report.problem or "")


def test_verify_names_the_row_after_a_removed_one(tmp_path: Path) -> None:
    src = _three_rows(tmp_path)
    bad = _tampered_copy(src, tmp_path / "bad.sqlite3", "DELETE FROM audit WHERE id = 2")
    report = AuditLog(bad).verify()
    assert (
        not report.ok and report.broken_id == 3 and "removed or changed" in (report.problem or "")
    )


def test_federation_rounds_are_recorded_and_totalled(tmp_path: Path) -> None:
    fed = FederationAudit(tmp_path / "s.sqlite3")
    assert fed.totals().rounds_joined == 0 and fed.totals().epsilon_spent is None
    fed.record_round(
        federation="busi-net",
        round_id=1,
        decision="joined",
        epsilon_spent=0.8,
        delta=1e-5,
        n_examples=120,
        model="fame@1.0",
    )
    fed.record_round(
        federation="busi-net",
        round_id=2,
        decision="declined",
        epsilon_spent=0.8,
        delta=1e-5,
        n_examples=0,
    )
    fed.record_round(
        federation="busi-net",
        round_id=3,
        decision="joined",
        epsilon_spent=1.7,
        delta=1e-5,
        n_examples=131,
        update_sha256="cd" * 32,
    )
    totals = fed.totals()
    assert (totals.rounds_joined, totals.rounds_declined) == (2, 1)
    assert (totals.epsilon_spent, totals.delta) == (1.7, 1e-5)
    (last,) = fed.read(action="federation_round", limit=1)
    assert (last.actor, last.subject) == ("federation", "round:busi-net:3")
    with pytest.raises(ValueError, match="epsilon_spent must be"):
        fed.record_round(
            federation="busi-net",
            round_id=4,
            decision="joined",
            epsilon_spent=-1.0,
            delta=1e-5,
            n_examples=1,
        )
    with pytest.raises(ValueError, match="decision"):
        fed.record_round(
            federation="busi-net",
            round_id=4,
            decision="maybe",
            epsilon_spent=1.0,
            delta=1e-5,
            n_examples=1,
        )
    assert fed.verify().ok and fed.verify().rows == 3
    fed.close()
