"""The durable job queue: one row per file the node was given, and what became of it.

Statuses (``jobs.status``)::

    queued     hashed and waiting for a worker
    running    claimed by a worker (`claim_next`); back to queued by
               `recover_interrupted` if the node stopped meanwhile
    done       results stored (`ResultStore.save_completed`, or `mark_done`)
    rejected   the file cannot be processed (bad, unreadable, vanished): `reason`
               says what was received and what to do; `error_code` is the
               `InputError.code`
    failed     an internal error, or the node stopped `max_attempts` times on it
    duplicate  same content (sha256) or SOP Instance UID as job `duplicate_of`

Only ``running`` moves to a terminal status; ``queued`` only to ``running``. Nothing is
silent: a file seen again is recorded as a ``duplicate`` row that names the job it repeats.

Which earlier job makes a new file a duplicate: a queued, running or done one, or one
rejected for its content. A ``failed`` job (the node's fault) and one rejected as
``unreadable`` (vanished, no permission: not about the content) do not: dropping the same
content again queues it again. That is the way to retry them.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from pathlib import Path

from appliance.store.audit_events import record_job_end
from appliance.store.db import StoreError
from appliance.store.instances import InstanceClaim, InstanceIdentity, register_instance
from appliance.store.job_recovery import JobRecovery, path_text
from appliance.store.job_types import (
    INTERRUPTED_ERROR_CODE,
    RETRYABLE_ERROR_CODES,
    TERMINAL_STATUSES,
    EnqueueOutcome,
    Job,
    JobNotFoundError,
    JobStateError,
    JobStatus,
    fetch_job,
    job_from_row,
    require_status,
)

__all__ = [  # the job types are re-exported: callers import them from here
    "INTERRUPTED_ERROR_CODE",
    "RETRYABLE_ERROR_CODES",
    "TERMINAL_STATUSES",
    "EnqueueOutcome",
    "Job",
    "JobNotFoundError",
    "JobQueue",
    "JobStateError",
    "JobStatus",
    "fetch_job",
    "job_from_row",
    "require_status",
]

log = logging.getLogger("fame_node.store")
_SHA256 = re.compile(r"[0-9a-f]{64}")


# Jobs whose content a new file with the same sha256 repeats (see the module docstring).
_BLOCKING = f"""
    status IN ('queued', 'running', 'done')
    OR (status = 'rejected'
        AND COALESCE(error_code, '') NOT IN ({", ".join(repr(c) for c in RETRYABLE_ERROR_CODES)}))
"""


class JobQueue(JobRecovery):
    """The durable queue over the ``jobs`` and ``sop_uids`` tables.

    Safe to share between the threads of one process; another process may open the same
    file at the same time (reads never wait for writes, writes take turns).

    Raises (every method): StoreError, or its subclasses JobNotFoundError and
    JobStateError where a job id is given.
    """

    # -- intake ----------------------------------------------------------------------------

    def enqueue(
        self,
        path: Path,
        sha256: str,
        size: int,
        mtime_ns: int | None = None,
        spool_path: Path | None = None,
    ) -> EnqueueOutcome:
        """Queue the file, or record it as a duplicate of the job that has its content.

        `spool_path` is the node's copy of the bytes that `sha256` was computed over: the
        worker analyses that copy, never the inbox file again. Atomic: of several
        concurrent calls with the same `sha256` (threads or processes), exactly one queues
        a job; the others record duplicates of it.
        """
        sha = _check_sha256(sha256)
        if size < 0:
            raise ValueError(f"size must be >= 0 bytes, got {size}")
        now = self._now()
        with self._db.write() as conn:
            original = self._original_for(conn, sha)
            if original is None:
                job_id = self._insert(
                    conn, path, JobStatus.QUEUED, now, sha, size, mtime_ns, spool_path=spool_path
                )
                return EnqueueOutcome(fetch_job(conn, job_id, self.path))
            reason = (
                f"same content (sha256) as job {original.id}, which is {original.status}; "
                "not processed again"
            )
            job_id = self._insert(
                conn,
                path,
                JobStatus.DUPLICATE,
                now,
                sha,
                size,
                mtime_ns,
                reason=reason,
                duplicate_of=original.id,
                finished=True,
            )
            return EnqueueOutcome(fetch_job(conn, job_id, self.path), duplicate_of=original.id)

    def record_rejected(
        self,
        path: Path,
        error_code: str,
        reason: str,
        sha256: str | None = None,
        size: int | None = None,
        mtime_ns: int | None = None,
    ) -> Job:
        """Record a file that was rejected before it could be queued (vanished, unreadable)."""
        sha = None if sha256 is None else _check_sha256(sha256)
        now = self._now()
        with self._db.write() as conn:
            job_id = self._insert(
                conn,
                path,
                JobStatus.REJECTED,
                now,
                sha,
                size,
                mtime_ns,
                reason=reason,
                error_code=error_code,
                finished=True,
            )
            job = fetch_job(conn, job_id, self.path)
            record_job_end(conn, job, now)  # the audit row commits with the rejection
            return job

    def known_sha256(self, sha256: str) -> bool:
        """True when `enqueue` of this content would record a duplicate."""
        sha = _check_sha256(sha256)
        with self._db.read() as conn:
            return self._original_for(conn, sha) is not None

    def path_seen(self, path: Path, size: int, mtime_ns: int) -> Job | None:
        """The latest job for this very file (path, size, mtime), if any, else None.

        A job rejected as unreadable or one that failed does not count: that file is worth
        another try (dropping it again is one way to retry it).
        """
        with self._db.read() as conn:
            row = conn.execute(
                f"""SELECT * FROM jobs WHERE path = ? AND size = ? AND mtime_ns = ?
                    AND status != 'failed'
                    AND NOT (status = 'rejected' AND COALESCE(error_code, '') IN
                        ({", ".join(repr(c) for c in RETRYABLE_ERROR_CODES)}))
                    ORDER BY id DESC LIMIT 1""",
                (path_text(path), size, mtime_ns),
            ).fetchone()
        return None if row is None else job_from_row(row)

    # -- workers ---------------------------------------------------------------------------

    def claim_next(self) -> Job | None:
        """Move the oldest queued job that is due (its `not_before` passed) to running
        (attempts + 1) and return it; None if none is due."""
        now = self._now()
        with self._db.write() as conn:
            row = conn.execute(
                "SELECT id FROM jobs WHERE status = 'queued' "
                "AND (not_before IS NULL OR not_before <= ?) ORDER BY id LIMIT 1",
                (now,),
            ).fetchone()
            if row is None:
                return None
            return self._start(conn, row["id"], now)

    def claim(self, job_id: int) -> Job | None:
        """Move this job to running if it is still queued and return it; else None."""
        now = self._now()
        with self._db.write() as conn:
            if fetch_job(conn, job_id, self.path).status is not JobStatus.QUEUED:
                return None
            return self._start(conn, job_id, now)

    def register_instance(self, job_id: int, identity: InstanceIdentity) -> InstanceClaim:
        """Record the DICOM instance running job `job_id` decoded to; a re-send or a
        conflict names the job holding its SOP Instance UID (`appliance.store.instances`)."""
        now = self._now()
        with self._db.write() as conn:
            require_status(conn, job_id, JobStatus.RUNNING, "register the instance of", self.path)
            return register_instance(conn, job_id, identity, now)

    def mark_done(self, job_id: int, model_version: str) -> Job:
        """running -> done. (`ResultStore.save_completed` does this with the results.)"""
        return self._finish(
            job_id, JobStatus.DONE, "mark done", model_version=model_version, reason=None
        )

    def mark_rejected(
        self,
        job_id: int,
        error_code: str,
        reason: str,
        quarantine_path: Path | str | None = None,
    ) -> Job:
        """running -> rejected, with the `InputError` code and its reason for a person."""
        return self._finish(
            job_id,
            JobStatus.REJECTED,
            "reject",
            error_code=error_code,
            reason=reason,
            quarantine_path=None if quarantine_path is None else str(quarantine_path),
        )

    def mark_failed(self, job_id: int, error_code: str, reason: str) -> Job:
        """running -> failed (an internal error; the reason says what to report)."""
        return self._finish(
            job_id, JobStatus.FAILED, "mark failed", error_code=error_code, reason=reason
        )

    def mark_duplicate(self, job_id: int, duplicate_of: int, reason: str) -> Job:
        """running -> duplicate of `duplicate_of` (e.g. the same SOP Instance UID)."""
        if duplicate_of == job_id:
            raise ValueError(f"job {job_id} cannot be a duplicate of itself")
        return self._finish(
            job_id,
            JobStatus.DUPLICATE,
            "mark duplicate",
            duplicate_of=duplicate_of,
            reason=reason,
        )

    # -- reading ---------------------------------------------------------------------------

    def get(self, job_id: int) -> Job:
        """The job with this id; raises JobNotFoundError."""
        with self._db.read() as conn:
            return fetch_job(conn, job_id, self.path)

    def counts(self) -> dict[str, int]:
        """Jobs per status; every status is present (0 when none)."""
        with self._db.read() as conn:
            rows = conn.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        counts = {status.value: 0 for status in JobStatus}
        counts.update({row["status"]: int(row["n"]) for row in rows})
        return counts

    def list_jobs(
        self, status: JobStatus | str | None = None, limit: int = 100, offset: int = 0
    ) -> list[Job]:
        """Jobs, newest first, optionally of one status."""
        if limit < 0 or offset < 0:
            raise ValueError(f"limit and offset must be >= 0, got {limit} and {offset}")
        with self._db.read() as conn:
            if status is None:
                rows = conn.execute(
                    "SELECT * FROM jobs ORDER BY id DESC LIMIT ? OFFSET ?", (limit, offset)
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT * FROM jobs WHERE status = ? ORDER BY id DESC LIMIT ? OFFSET ?",
                    (_check_status(status).value, limit, offset),
                ).fetchall()
        return [job_from_row(row) for row in rows]

    # -- internals -------------------------------------------------------------------------

    def _original_for(self, conn: sqlite3.Connection, sha: str) -> Job | None:
        row = conn.execute(
            f"SELECT * FROM jobs WHERE sha256 = ? AND ({_BLOCKING}) ORDER BY id LIMIT 1", (sha,)
        ).fetchone()
        return None if row is None else job_from_row(row)

    def _insert(
        self,
        conn: sqlite3.Connection,
        path: Path,
        status: JobStatus,
        now: str,
        sha: str | None,
        size: int | None,
        mtime_ns: int | None,
        *,
        reason: str | None = None,
        error_code: str | None = None,
        duplicate_of: int | None = None,
        finished: bool = False,
        spool_path: Path | None = None,
    ) -> int:
        cursor = conn.execute(
            "INSERT INTO jobs (path, sha256, size, mtime_ns, status, error_code, reason, "
            "duplicate_of, created_at, updated_at, finished_at, spool_path) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                path_text(path),
                sha,
                size,
                mtime_ns,
                status.value,
                error_code,
                reason,
                duplicate_of,
                now,
                now,
                now if finished else None,
                None if spool_path is None else str(spool_path),
            ),
        )
        if cursor.lastrowid is None:  # cannot happen after an INSERT; keeps the type exact
            raise StoreError(f"inserting a job for {path} returned no row id", path=self.path)
        return cursor.lastrowid

    def _start(self, conn: sqlite3.Connection, job_id: int, now: str) -> Job:
        conn.execute(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?, "
            "updated_at = ? WHERE id = ?",
            (now, now, job_id),
        )
        return fetch_job(conn, job_id, self.path)

    def _finish(
        self,
        job_id: int,
        status: JobStatus,
        action: str,
        *,
        reason: str | None,
        error_code: str | None = None,
        model_version: str | None = None,
        quarantine_path: str | None = None,
        duplicate_of: int | None = None,
    ) -> Job:
        now = self._now()
        with self._db.write() as conn:
            require_status(conn, job_id, JobStatus.RUNNING, action, self.path)
            if duplicate_of is not None:
                fetch_job(conn, duplicate_of, self.path)  # a clear error for a bad id
            conn.execute(
                "UPDATE jobs SET status = ?, error_code = ?, reason = ?, "
                "model_version = COALESCE(?, model_version), quarantine_path = ?, "
                "duplicate_of = ?, updated_at = ?, finished_at = ?, not_before = NULL, "
                "waiting_for = NULL WHERE id = ?",
                (
                    status.value,
                    error_code,
                    reason,
                    model_version,
                    quarantine_path,
                    duplicate_of,
                    now,
                    now,
                    job_id,
                ),
            )
            job = fetch_job(conn, job_id, self.path)
            if status in (JobStatus.REJECTED, JobStatus.FAILED):
                record_job_end(conn, job, now)
            return job


def _check_sha256(sha256: str) -> str:
    sha = sha256.lower()
    if not _SHA256.fullmatch(sha):
        raise ValueError(f"expected a sha256 as 64 hexadecimal digits, got {sha256!r}")
    return sha


def _check_status(status: JobStatus | str) -> JobStatus:
    try:
        return JobStatus(status)
    except ValueError:
        raise ValueError(
            f"unknown job status {status!r}; expected one of "
            f"{', '.join(s.value for s in JobStatus)}"
        ) from None
