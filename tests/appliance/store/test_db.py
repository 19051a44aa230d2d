"""The database file: pragmas, versioned migrations, refusal of newer schemas, time stamps."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from appliance.store import (
    SCHEMA_VERSION,
    JobQueue,
    JobStatus,
    ResultStore,
    SchemaTooNewError,
    StoreError,
)
from appliance.store.db import connect, from_db_time, migrate, to_db_time
from appliance.store.schema import JOB_STATUSES, MIGRATIONS


def _versions(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY version")]


def _tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {r[0] for r in rows}


def test_open_creates_the_latest_schema_with_wal_and_foreign_keys(tmp_path: Path) -> None:
    db = tmp_path / "node.sqlite3"
    conn = connect(db)
    try:
        assert SCHEMA_VERSION == 7
        expected = {"schema_version", "jobs", "sop_uids", "images", "results"}
        assert expected | {"model_events", "reviews", "outbound", "audit"} <= _tables(conn)
        assert {"federation_rounds", "federation_heldout", "federation_models"} <= _tables(conn)
        job_columns = {r[1] for r in conn.execute("PRAGMA table_info(jobs)")}
        assert {"spool_path", "not_before", "waiting_for", "retries", "conflict_of"} <= job_columns
        uid_columns = {r[1] for r in conn.execute("PRAGMA table_info(sop_uids)")}
        assert {"patient_id", "study_instance_uid", "pixel_sha256"} <= uid_columns
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        conn.execute(
            "INSERT INTO audit (at, actor, action, prev_sha256, sha256) "
            "VALUES ('t', 'node', 'result', '0', '1')"
        )
        for change in ("UPDATE audit SET actor = 'x'", "DELETE FROM audit"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(change)
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"jobs_sha256", "jobs_status"} <= indexes
    finally:
        conn.close()
    assert _versions(db) == list(range(1, SCHEMA_VERSION + 1))


def test_reopening_is_idempotent_and_keeps_data(tmp_path: Path) -> None:
    db = tmp_path / "node.sqlite3"
    with JobQueue(db) as queue:
        job = queue.enqueue(tmp_path / "a.png", "a" * 64, 10).job
    for _ in range(3):
        with JobQueue(db) as queue, ResultStore(db):
            assert queue.get(job.id).status == "queued"
    assert _versions(db) == list(range(1, SCHEMA_VERSION + 1))


def test_a_store_written_by_a_newer_version_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    db = tmp_path / "node.sqlite3"
    JobQueue(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO schema_version VALUES (?, ?)", (SCHEMA_VERSION + 1, "x"))
    before = db.read_bytes()
    with pytest.raises(SchemaTooNewError) as info:
        JobQueue(db)
    assert info.value.found == SCHEMA_VERSION + 1
    assert info.value.supported == SCHEMA_VERSION
    assert "newer FAME Node" in str(info.value) and str(db) in str(info.value)
    assert isinstance(info.value, StoreError)
    with pytest.raises(SchemaTooNewError):
        ResultStore(db)
    assert _versions(db) == list(range(1, SCHEMA_VERSION + 2))
    assert db.read_bytes() == before


def test_migrations_run_in_order_and_a_failing_one_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "node.sqlite3"

    def add_notes(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE clinician_notes (job_id INTEGER, text TEXT)")

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x INTEGER)")
        conn.execute("THIS IS NOT SQL")

    connect(db).close()  # the current version
    conn = connect(db, migrations=(*MIGRATIONS, add_notes))
    assert "clinician_notes" in _tables(conn)
    conn.close()
    with_notes = list(range(1, SCHEMA_VERSION + 2))
    assert _versions(db) == with_notes

    with pytest.raises(StoreError):
        connect(db, migrations=(*MIGRATIONS, add_notes, broken))
    assert _versions(db) == with_notes
    with sqlite3.connect(db) as raw:
        assert "half_done" not in _tables(raw)


def test_migrate_reports_the_version_reached(tmp_path: Path) -> None:
    db = tmp_path / "node.sqlite3"
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        assert migrate(conn, db) == SCHEMA_VERSION
        assert migrate(conn, db) == SCHEMA_VERSION  # nothing to do the second time
    finally:
        conn.close()


def test_a_file_that_is_not_a_database_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "node.sqlite3"
    db.write_bytes(b"this is a text file, not SQLite" * 100)
    with pytest.raises(StoreError, match="not a FAME Node database"):
        JobQueue(db)


def test_a_missing_folder_is_named_in_the_error(tmp_path: Path) -> None:
    db = tmp_path / "missing" / "node.sqlite3"
    with pytest.raises(StoreError, match="does not exist") as info:
        JobQueue(db)
    assert info.value.path == db


def test_time_stamps_are_utc_fixed_width_and_round_trip() -> None:
    moment = datetime(2025, 3, 1, 23, 30, 0, 5, tzinfo=timezone(timedelta(hours=-5)))
    text = to_db_time(moment)
    assert text == "2025-03-02T04:30:00.000005Z"
    assert from_db_time(text) == moment
    assert from_db_time(text).utcoffset() == timedelta(0)
    assert to_db_time(datetime(2025, 1, 1, tzinfo=UTC)) < text  # sorts as text
    with pytest.raises(ValueError, match="timezone-aware"):
        to_db_time(datetime(2025, 1, 1))


def test_the_schema_allows_exactly_the_job_statuses(tmp_path: Path) -> None:
    assert set(JOB_STATUSES) == {s.value for s in JobStatus}
    conn = connect(tmp_path / "node.sqlite3")
    try:
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            conn.execute(
                "INSERT INTO jobs (path, status, created_at, updated_at) "
                "VALUES ('a', 'paused', 'x', 'x')"
            )
    finally:
        conn.close()


def test_a_version_1_store_is_upgraded_in_place_keeping_its_jobs(tmp_path: Path) -> None:
    db = tmp_path / "node.sqlite3"
    connect(db, migrations=MIGRATIONS[:1]).close()  # a store from the first release
    with sqlite3.connect(db) as raw:
        raw.execute(
            "INSERT INTO jobs (path, status, created_at, updated_at) "
            "VALUES ('/in/a.png', 'queued', 'now', 'now')"
        )
    with JobQueue(db) as queue:
        assert queue.counts()["queued"] == 1
    assert _versions(db) == list(range(1, SCHEMA_VERSION + 1))
