"""The store's schema: one migration per version, in order.

Migration *n* takes the schema from version *n - 1* to *n*; `appliance.store.db.migrate`
runs the missing ones in one transaction when a file is opened. Each statement runs on
its own: `executescript` would COMMIT the migration transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

Migration = Callable[[sqlite3.Connection], None]
"""Takes the schema one version up; runs inside the open transaction (no COMMIT in it)."""

JOB_STATUSES = ("queued", "running", "done", "rejected", "failed", "duplicate")

_V1 = (
    f"""
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        path TEXT NOT NULL,
        sha256 TEXT,
        size INTEGER,
        mtime_ns INTEGER,
        status TEXT NOT NULL CHECK (status IN ({", ".join(repr(s) for s in JOB_STATUSES)})),
        error_code TEXT,
        reason TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        sop_instance_uid TEXT,
        duplicate_of INTEGER REFERENCES jobs(id),
        model_version TEXT,
        quarantine_path TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT
    )
    """,
    "CREATE INDEX jobs_sha256 ON jobs(sha256)",
    "CREATE INDEX jobs_status ON jobs(status)",
    "CREATE INDEX jobs_path ON jobs(path)",
    """
    CREATE TABLE sop_uids (
        uid TEXT PRIMARY KEY,
        job_id INTEGER NOT NULL REFERENCES jobs(id)
    )
    """,
    """
    CREATE TABLE images (
        job_id INTEGER PRIMARY KEY REFERENCES jobs(id),
        source_format TEXT NOT NULL,
        modality TEXT,
        patient_id TEXT,
        patient_name TEXT,
        study_instance_uid TEXT,
        series_instance_uid TEXT,
        sop_instance_uid TEXT,
        sop_class_uid TEXT,
        study_date TEXT,
        manufacturer TEXT,
        model_name TEXT,
        photometric TEXT,
        bits_stored INTEGER,
        n_frames_total INTEGER NOT NULL,
        frame_indices TEXT NOT NULL,
        pixel_spacing_row_mm REAL,
        pixel_spacing_col_mm REAL,
        crop TEXT,
        notes TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE results (
        id INTEGER PRIMARY KEY,
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        frame_index INTEGER NOT NULL,
        diagnosis TEXT,
        probabilities TEXT NOT NULL,
        confidence REAL,
        lesion_area_px REAL,
        lesion_area_mm2 REAL,
        max_diameter_px REAL,
        max_diameter_mm REAL,
        n_lesions INTEGER,
        flags TEXT NOT NULL,
        result_dir TEXT,
        model_version TEXT,
        backend TEXT,
        created_at TEXT NOT NULL,
        UNIQUE (job_id, frame_index)
    )
    """,
)


def _migrate_to_v1(conn: sqlite3.Connection) -> None:
    # One statement at a time: `executescript` would COMMIT the migration transaction.
    for statement in _V1:
        conn.execute(statement)


_V2 = (
    # The history of the models this node ran: installed, activated, refused, rolled back.
    """
    CREATE TABLE model_events (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        model TEXT NOT NULL,
        bundle_path TEXT,
        action TEXT NOT NULL CHECK (action IN
            ('installed', 'activated', 'refused', 'rolled_back', 'removed')),
        actor TEXT NOT NULL,
        reason TEXT,
        figures TEXT NOT NULL DEFAULT '{}'
    )
    """,
    "CREATE INDEX model_events_model ON model_events(model)",
    # Clinicians' decisions on results. The current review of a frame is its newest row
    # that was not undone; confirmed and corrected frames form the local training set.
    """
    CREATE TABLE reviews (
        id INTEGER PRIMARY KEY,
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        frame_index INTEGER NOT NULL,
        decision TEXT NOT NULL CHECK (decision IN ('confirmed', 'corrected', 'mask_rejected')),
        diagnosis TEXT,
        mask_path TEXT,
        reviewer TEXT NOT NULL,
        at TEXT NOT NULL,
        note TEXT,
        undone_at TEXT
    )
    """,
    "CREATE INDEX reviews_frame ON reviews(job_id, frame_index)",
)


def _migrate_to_v2(conn: sqlite3.Connection) -> None:
    for statement in _V2:
        conn.execute(statement)


_V3 = (
    # The node's own copy of the bytes hashed at intake (work/spool/<sha256>): the bytes
    # analysed are the bytes queued, whatever happens to the inbox file meanwhile.
    "ALTER TABLE jobs ADD COLUMN spool_path TEXT",
    # Passing faults (disk full, database locked): the job waits in the queue until
    # not_before, `waiting_for` says for what; `retries` counts them (not `attempts`).
    "ALTER TABLE jobs ADD COLUMN not_before TEXT",
    "ALTER TABLE jobs ADD COLUMN waiting_for TEXT",
    "ALTER TABLE jobs ADD COLUMN retries INTEGER NOT NULL DEFAULT 0",
    # A job whose SOP Instance UID an earlier job holds for another instance (other
    # patient, study or pixels): analysed on its own and flagged, never a duplicate.
    "ALTER TABLE jobs ADD COLUMN conflict_of INTEGER REFERENCES jobs(id)",
    # sha256 over the decoded frames as analysed: the same instance re-sent in another
    # transfer syntax has other bytes but these pixels.
    "ALTER TABLE jobs ADD COLUMN pixel_sha256 TEXT",
    "ALTER TABLE sop_uids ADD COLUMN patient_id TEXT",
    "ALTER TABLE sop_uids ADD COLUMN study_instance_uid TEXT",
    "ALTER TABLE sop_uids ADD COLUMN pixel_sha256 TEXT",
)


def _migrate_to_v3(conn: sqlite3.Connection) -> None:
    for statement in _V3:
        conn.execute(statement)


_V4 = (
    # The durable send queue of DICOM objects for the PACS (SEG, SR): one row per object and
    # destination, kept across restarts; `not_before` spaces the retries of a failed send.
    """
    CREATE TABLE outbound (
        id INTEGER PRIMARY KEY,
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        kind TEXT NOT NULL,
        path TEXT NOT NULL,
        sop_instance_uid TEXT,
        destination TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        not_before TEXT,
        last_error TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        sent_at TEXT,
        UNIQUE (path, destination)
    )
    """,
    "CREATE INDEX outbound_status ON outbound(status, not_before)",
    # The audit log: every result, review decision, model change and federation round.
    # Append-only (the triggers refuse UPDATE and DELETE); each row carries the sha256 of
    # its content chained to the previous row's, so a rewritten history shows.
    """
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        subject TEXT,
        detail TEXT NOT NULL DEFAULT '{}',
        prev_sha256 TEXT NOT NULL,
        sha256 TEXT NOT NULL
    )
    """,
    "CREATE INDEX audit_action ON audit(action)",
    """
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END
    """,
    """
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END
    """,
)


def _migrate_to_v4(conn: sqlite3.Connection) -> None:
    for statement in _V4:
        conn.execute(statement)


_V5 = (
    # The node's privacy ledger (appliance.federation.ledger): one row per time it trained
    # for the federation, with what the accountant composes (noise multiplier, sampling
    # rate, steps) and the cumulative epsilon after it. Append-only: a deleted or changed
    # row would hand the node back budget it has spent.
    """
    CREATE TABLE federation_rounds (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        run_id TEXT NOT NULL,
        server_round INTEGER NOT NULL CHECK (server_round >= 0),
        mode TEXT NOT NULL CHECK (mode IN ('example', 'client')),
        noise_multiplier REAL NOT NULL CHECK (noise_multiplier > 0),
        sample_rate REAL NOT NULL CHECK (sample_rate > 0 AND sample_rate <= 1),
        steps INTEGER NOT NULL CHECK (steps >= 1),
        delta REAL NOT NULL CHECK (delta > 0 AND delta < 1),
        n_examples INTEGER NOT NULL CHECK (n_examples >= 0),
        metrics TEXT NOT NULL DEFAULT '{}',
        epsilon REAL NOT NULL CHECK (epsilon >= 0)
    )
    """,
    """
    CREATE TRIGGER federation_rounds_no_update BEFORE UPDATE ON federation_rounds
    BEGIN SELECT RAISE(ABORT, 'the privacy ledger is append-only'); END
    """,
    """
    CREATE TRIGGER federation_rounds_no_delete BEFORE DELETE ON federation_rounds
    BEGIN SELECT RAISE(ABORT, 'the privacy ledger is append-only'); END
    """,
    # Which cases are held out of training (appliance.federation.heldout): one row per group
    # (a keyed digest of the patient, or the job), assigned once and never changed, so a
    # case validated on is never trained on in a later round.
    """
    CREATE TABLE federation_heldout (
        group_key TEXT PRIMARY KEY,
        heldout INTEGER NOT NULL CHECK (heldout IN (0, 1)),
        assigned_at TEXT NOT NULL
    )
    """,
    """
    CREATE TRIGGER federation_heldout_no_update BEFORE UPDATE ON federation_heldout
    BEGIN SELECT RAISE(ABORT, 'held-out assignments never change'); END
    """,
    """
    CREATE TRIGGER federation_heldout_no_delete BEFORE DELETE ON federation_heldout
    BEGIN SELECT RAISE(ABORT, 'held-out assignments never change'); END
    """,
)


def _migrate_to_v5(conn: sqlite3.Connection) -> None:
    for statement in _V5:
        conn.execute(statement)


_V6 = (
    # The global models this node received from its federation and what became of each
    # (appliance.federation.deploy): deployed as a new bundle version, or refused with the
    # reason (bad signature, other shapes, worse on the held-out cases, too few cases).
    # One row per received model (run, round, digest of what was received); append-only,
    # so a decision is never rewritten.
    """
    CREATE TABLE federation_models (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        run_id TEXT NOT NULL,
        model_round INTEGER NOT NULL CHECK (model_round >= 0),
        digest TEXT NOT NULL,
        decision TEXT NOT NULL CHECK (decision IN ('deployed', 'refused')),
        reason TEXT NOT NULL,
        model TEXT,
        figures TEXT NOT NULL DEFAULT '{}',
        UNIQUE (run_id, model_round, digest)
    )
    """,
    """
    CREATE TRIGGER federation_models_no_update BEFORE UPDATE ON federation_models
    BEGIN SELECT RAISE(ABORT, 'deployment decisions are append-only'); END
    """,
    """
    CREATE TRIGGER federation_models_no_delete BEFORE DELETE ON federation_models
    BEGIN SELECT RAISE(ABORT, 'deployment decisions are append-only'); END
    """,
)


def _migrate_to_v6(conn: sqlite3.Connection) -> None:
    for statement in _V6:
        conn.execute(statement)


def _migrate_to_v7(conn: sqlite3.Connection) -> None:
    # A fold-ensemble model's per-frame disagreement of its lesion maps, in [0, 1]
    # (trainer.models.fold_ensemble): shown next to the confidence, flagged high_uncertainty
    # above the bundle's threshold. NULL for single-model results and rows written before.
    conn.execute("ALTER TABLE results ADD COLUMN seg_uncertainty REAL")


MIGRATIONS: tuple[Migration, ...] = (
    _migrate_to_v1,
    _migrate_to_v2,
    _migrate_to_v3,
    _migrate_to_v4,
    _migrate_to_v5,
    _migrate_to_v6,
    _migrate_to_v7,
)
SCHEMA_VERSION = len(MIGRATIONS)


__all__ = ["JOB_STATUSES", "MIGRATIONS", "SCHEMA_VERSION", "Migration"]
