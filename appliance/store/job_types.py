"""The job queue's data: statuses, the `Job` row, enqueue outcomes, and their errors.

`appliance.store.jobs` (the queue) and `appliance.store.results` build on these; see the
queue's module docstring for what each status means.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from appliance.errors import UnreadableFileError
from appliance.store.db import StoreError, from_db_time


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    REJECTED = "rejected"
    FAILED = "failed"
    DUPLICATE = "duplicate"


TERMINAL_STATUSES = frozenset(
    {JobStatus.DONE, JobStatus.REJECTED, JobStatus.FAILED, JobStatus.DUPLICATE}
)

# Rejections that say nothing about the content: the same bytes may be tried again.
RETRYABLE_ERROR_CODES = frozenset({UnreadableFileError.code})

# Set aside after the node stopped `max_attempts` times on it (`fame-node jobs retry`).
INTERRUPTED_ERROR_CODE = "interrupted"


class JobNotFoundError(StoreError):
    """No job has this id."""

    def __init__(self, job_id: int, *, path: Path | None = None) -> None:
        self.job_id = job_id
        super().__init__(f"there is no job {job_id} in the database", path=path)


class JobStateError(StoreError):
    """The job is not in the status the operation needs (e.g. `mark_done` on a queued job)."""

    def __init__(
        self, job_id: int, status: str, expected: str, action: str, *, path: Path | None = None
    ) -> None:
        self.job_id = job_id
        self.status = status = str(status)  # plain text, also for a JobStatus
        self.expected = expected = str(expected)
        super().__init__(
            f"cannot {action} job {job_id}: it is {status!r}, expected {expected!r}",
            path=path,
        )


@dataclass(frozen=True)
class Job:
    """One row of ``jobs``. Times are timezone-aware UTC."""

    id: int
    path: Path
    status: JobStatus
    sha256: str | None
    size: int | None
    mtime_ns: int | None
    error_code: str | None
    reason: str | None
    attempts: int
    # An identifier: kept out of repr so that logging a Job never prints it.
    sop_instance_uid: str | None = field(repr=False)
    duplicate_of: int | None
    model_version: str | None
    quarantine_path: Path | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    # The node's copy of the bytes hashed at intake; None for rows made before schema v3
    # or once the job ended and the copy was released.
    spool_path: Path | None = None
    not_before: datetime | None = None  # a retried job is not claimed before this
    waiting_for: str | None = None  # the passing fault it waits out, for status
    retries: int = 0  # passing faults met so far
    conflict_of: int | None = None  # holds the SOP Instance UID of another instance
    pixel_sha256: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class EnqueueOutcome:
    """What `JobQueue.enqueue` (or `Intake.submit`) recorded for a file.

    `job` is the new row: ``queued``, or ``duplicate`` with `duplicate_of` set. When
    `already_seen` is true nothing was recorded: this very file (same path, size and
    modification time) is already job `job` (Intake checks that before hashing).
    """

    job: Job
    duplicate_of: int | None = None
    already_seen: bool = False

    @property
    def id(self) -> int:
        return self.job.id

    @property
    def status(self) -> JobStatus:
        return self.job.status

    @property
    def path(self) -> Path:
        return self.job.path

    @property
    def queued(self) -> bool:
        """True when this call put a new job in the queue."""
        return not self.already_seen and self.job.status is JobStatus.QUEUED


def _opt_time(value: str | None) -> datetime | None:
    return None if value is None else from_db_time(value)


def job_from_row(row: sqlite3.Row) -> Job:
    """A `Job` from a ``SELECT * FROM jobs`` row."""
    return Job(
        id=row["id"],
        path=Path(row["path"]),
        status=JobStatus(row["status"]),
        sha256=row["sha256"],
        size=row["size"],
        mtime_ns=row["mtime_ns"],
        error_code=row["error_code"],
        reason=row["reason"],
        attempts=row["attempts"],
        sop_instance_uid=row["sop_instance_uid"],
        duplicate_of=row["duplicate_of"],
        model_version=row["model_version"],
        quarantine_path=None if row["quarantine_path"] is None else Path(row["quarantine_path"]),
        created_at=from_db_time(row["created_at"]),
        updated_at=from_db_time(row["updated_at"]),
        started_at=_opt_time(row["started_at"]),
        finished_at=_opt_time(row["finished_at"]),
        spool_path=None if row["spool_path"] is None else Path(row["spool_path"]),
        not_before=_opt_time(row["not_before"]),
        waiting_for=row["waiting_for"],
        retries=row["retries"],
        conflict_of=row["conflict_of"],
        pixel_sha256=row["pixel_sha256"],
    )


def fetch_job(conn: sqlite3.Connection, job_id: int, db_path: Path) -> Job:
    row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise JobNotFoundError(job_id, path=db_path)
    return job_from_row(row)


def require_status(
    conn: sqlite3.Connection, job_id: int, expected: JobStatus, action: str, db_path: Path
) -> Job:
    """The job, if it is in `expected` status; raises JobNotFoundError / JobStateError."""
    job = fetch_job(conn, job_id, db_path)
    if job.status is not expected:
        raise JobStateError(job_id, job.status, expected, action, path=db_path)
    return job
