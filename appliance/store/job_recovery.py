"""Jobs that did not end the ordinary way: interrupted, hit by a passing fault, set aside.

Part of the job queue (`JobQueue` inherits `JobRecovery`); see `appliance.store.jobs` for
the statuses. What this module adds:

* `defer`: running -> queued after a *passing* fault (disk full, database locked, a
  decoder that could not be started), with ``not_before`` (exponential backoff, the caller
  computes it) and ``waiting_for`` saying what for. It does not count as an attempt: a job
  is never set aside because the disk was full.
* `requeue`: running -> queued when the service stops before the job finished (SIGTERM
  with a job longer than the stop timeout); not counted as an attempt either.
* `recover_interrupted`: at start, jobs left ``running`` by a process that died: back to
  the queue, or set aside as ``failed`` (``interrupted``) once the node died
  `max_attempts` times while processing the same file (a file that kills the node must
  not stop it for good). Only the process holding the node lock may call it.
* `retry`: ``failed`` jobs back to the queue, for IT staff (``fame-node jobs retry``).
* `waiting`: what the queued jobs wait for, for ``fame-node status``.

Log lines name jobs by id only: paths may carry patient names.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from appliance.store.audit_events import record_job_end
from appliance.store.db import StoreBase, from_db_time, to_db_time
from appliance.store.job_types import (
    INTERRUPTED_ERROR_CODE,
    Job,
    JobStateError,
    JobStatus,
    fetch_job,
    require_status,
)

log = logging.getLogger("fame_node.store")


def path_text(path: Path | str) -> str:
    """The path as text SQLite can store: a name that is not valid UTF-8 (lone surrogates
    from `os.fsdecode`) gets its undecodable bytes written as ``\\xNN``."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    return text


class JobRecovery(StoreBase):
    """Retry and recovery over the ``jobs`` table (mixed into `JobQueue`)."""

    def defer(self, job_id: int, waiting_for: str, delay_s: float) -> Job:
        """running -> queued, not claimed again for `delay_s`; `waiting_for` says why."""
        if delay_s < 0:
            raise ValueError(f"delay_s must be >= 0 seconds, got {delay_s}")
        now = self._clock()
        with self._db.write() as conn:
            require_status(conn, job_id, JobStatus.RUNNING, "defer", self.path)
            conn.execute(
                "UPDATE jobs SET status = 'queued', attempts = MAX(attempts - 1, 0), "
                "retries = retries + 1, not_before = ?, waiting_for = ?, started_at = NULL, "
                "updated_at = ? WHERE id = ?",
                (
                    to_db_time(now + timedelta(seconds=delay_s)),
                    waiting_for,
                    to_db_time(now),
                    job_id,
                ),
            )
            return fetch_job(conn, job_id, self.path)

    def requeue(self, job_ids: Sequence[int]) -> list[Job]:
        """Put these running jobs back in the queue (the service stops before they end).

        Jobs no longer running (they finished meanwhile) are left as they are.
        """
        now = self._now()
        changed: list[Job] = []
        with self._db.write() as conn:
            for job_id in job_ids:
                if fetch_job(conn, job_id, self.path).status is not JobStatus.RUNNING:
                    continue
                conn.execute(
                    "UPDATE jobs SET status = 'queued', attempts = MAX(attempts - 1, 0), "
                    "started_at = NULL, updated_at = ? WHERE id = ?",
                    (now, job_id),
                )
                changed.append(fetch_job(conn, job_id, self.path))
        return changed

    def recover_interrupted(self, max_attempts: int = 3) -> list[Job]:
        """At start: put jobs left running by a stopped node back in the queue.

        A job that has already been started `max_attempts` times goes to failed instead,
        so that one file that kills the node cannot stop it for good (`retry` brings it
        back). Only the process holding the node lock may call this: a running job of a
        live process would be taken from it. Returns the jobs changed, as they are now.
        """
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        now = self._now()
        with self._db.write() as conn:
            rows = conn.execute(
                "SELECT id, attempts FROM jobs WHERE status = 'running' ORDER BY id"
            ).fetchall()
            for row in rows:
                if row["attempts"] >= max_attempts:
                    conn.execute(
                        "UPDATE jobs SET status = 'failed', error_code = ?, reason = ?, "
                        "updated_at = ?, finished_at = ? WHERE id = ?",
                        (
                            INTERRUPTED_ERROR_CODE,
                            f"the node stopped {row['attempts']} times while processing "
                            "this file; it is set aside (see the node log). Retry it with "
                            f"`fame-node jobs retry {row['id']}`.",
                            now,
                            now,
                            row["id"],
                        ),
                    )
                    # In the same transaction: the audit log sees every job set aside.
                    record_job_end(conn, fetch_job(conn, row["id"], self.path), now)
                else:
                    conn.execute(
                        "UPDATE jobs SET status = 'queued', started_at = NULL, updated_at = ? "
                        "WHERE id = ?",
                        (now, row["id"]),
                    )
            recovered = [fetch_job(conn, row["id"], self.path) for row in rows]
        for job in recovered:
            if job.status is JobStatus.FAILED:
                log.warning(
                    "job %d set aside: the node stopped %d times while processing it",
                    job.id,
                    job.attempts,
                )
            else:
                log.warning(
                    "job %d was interrupted (attempt %d of %d); queued again",
                    job.id,
                    job.attempts,
                    max_attempts,
                )
        return recovered

    def retry(self, job_ids: Sequence[int] | None = None) -> list[Job]:
        """``failed`` jobs back to the queue (all of them when `job_ids` is None).

        Raises:
            JobNotFoundError: an id names no job.
            JobStateError: a named job is not failed.
        """
        now = self._now()
        with self._db.write() as conn:
            if job_ids is None:
                rows = conn.execute("SELECT id FROM jobs WHERE status = 'failed'").fetchall()
                ids = [int(r["id"]) for r in rows]
            else:
                ids = list(job_ids)
                for job_id in ids:
                    job = fetch_job(conn, job_id, self.path)
                    if job.status is not JobStatus.FAILED:
                        raise JobStateError(job_id, job.status, "failed", "retry", path=self.path)
            for job_id in ids:
                conn.execute(
                    "UPDATE jobs SET status = 'queued', attempts = 0, error_code = NULL, "
                    "reason = NULL, not_before = NULL, waiting_for = NULL, started_at = NULL, "
                    "finished_at = NULL, updated_at = ? WHERE id = ?",
                    (now, job_id),
                )
            return [fetch_job(conn, job_id, self.path) for job_id in ids]

    def next_due(self) -> datetime | None:
        """When the earliest queued job becomes due (None: no queued job waits)."""
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT MIN(COALESCE(not_before, '')) AS t FROM jobs WHERE status = 'queued'"
            ).fetchone()
        if row is None or row["t"] is None:
            return None
        return self._clock() if row["t"] == "" else from_db_time(row["t"])

    def waiting(self) -> dict[str, int]:
        """Queued jobs waiting out a passing fault, counted by what they wait for."""
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT waiting_for, COUNT(*) AS n FROM jobs WHERE status = 'queued' "
                "AND waiting_for IS NOT NULL GROUP BY waiting_for"
            ).fetchall()
        return {str(r["waiting_for"]): int(r["n"]) for r in rows}

    def release_spool(self, job_id: int) -> Path | None:
        """Forget job `job_id`'s spool copy; returns the file when no other job that may
        still run (queued, running, failed) uses it, so the caller can delete it."""
        with self._db.write() as conn:
            job = fetch_job(conn, job_id, self.path)
            if job.spool_path is None:
                return None
            conn.execute("UPDATE jobs SET spool_path = NULL WHERE id = ?", (job_id,))
            in_use = _spool_in_use(conn, job.spool_path)
        return None if in_use else job.spool_path

    def spool_in_use(self, spool_path: Path) -> bool:
        """True when a job that may still run (queued, running, failed) reads this copy."""
        with self._db.read() as conn:
            return _spool_in_use(conn, spool_path)


def _spool_in_use(conn: sqlite3.Connection, spool_path: Path) -> bool:
    row = conn.execute(
        "SELECT 1 FROM jobs WHERE spool_path = ? AND status IN ('queued', 'running', 'failed') "
        "LIMIT 1",
        (str(spool_path),),
    ).fetchone()
    return row is not None
