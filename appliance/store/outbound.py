"""The durable send queue of DICOM objects for the PACS, in the ``outbound`` table.

One row per object (a job's SEG or SR file in the outbox) and destination (``AE@host:port``):

* ``pending``: to be sent once ``not_before`` (NULL: at once) has passed;
* ``sent``: the PACS answered success (0x0000) or a warning (0xB000, 0xB006, 0xB007: it
  stored the object, perhaps coerced); the warning is kept in ``last_error``;
* ``failed``: set aside after the PACS refused it ``max_attempts`` times (or its file is
  gone); ``fame-node outbox retry`` puts it back.

Rows are inserted by `insert_outbound` inside the transaction that marks the job done
(`ResultStore.save_completed`), so a done job always has its sends queued and a queued
send always belongs to a done job. One service per store (its lock) runs one sender, so a
"claim" is only a read of the rows due: a row whose send a crash cut off is still pending
and simply due again (a resend of the same SOP Instance UID is harmless to a PACS).

Two kinds of failure are told apart. The PACS refusing an object (a failure status, no
presentation context for its class) counts an attempt against that row: `mark_retry`.
The PACS unreachable, refusing the association or out of resources is the destination's
passing fault, not the object's: `defer` moves the rows' ``not_before`` and records why,
counting no attempt, so a PACS down for a weekend turns nothing into a failure.

Rows name objects by job id, kind and the outbox file's name (``job-NNNNNN-sr.dcm``,
which carries no patient data); nothing here reads the files.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal, cast

from appliance.store.db import StoreBase, StoreError, from_db_time, to_db_time

OutboundStatus = Literal["pending", "sent", "failed"]
OUTBOUND_STATUSES: tuple[OutboundStatus, ...] = ("pending", "sent", "failed")
KINDS = ("seg", "sr")


@dataclass(frozen=True)
class OutboundItem:
    """One object to queue: its kind (``seg`` / ``sr``), outbox file and SOP Instance UID."""

    kind: str
    path: Path
    sop_instance_uid: str | None
    destination: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"outbound kind must be one of {KINDS}, got {self.kind!r}")
        if not self.destination:
            raise ValueError("an outbound item needs a destination (AE@host:port), got ''")


@dataclass(frozen=True)
class Outbound:
    """One row of ``outbound``."""

    id: int
    job_id: int
    kind: str
    path: Path
    sop_instance_uid: str | None
    destination: str
    status: OutboundStatus
    attempts: int
    not_before: datetime | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None


def insert_outbound(
    conn: sqlite3.Connection, job_id: int, items: Iterable[OutboundItem], now: str
) -> int:
    """Queue `items` for job `job_id` inside the caller's open write transaction.

    A retried job rewrites its outbox files under the same names: an existing row for the
    same file and destination becomes pending again (the file's content is new). Returns
    how many rows were inserted or renewed.
    """
    n = 0
    for item in items:
        conn.execute(
            "INSERT INTO outbound (job_id, kind, path, sop_instance_uid, destination, status, "
            "attempts, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?) "
            "ON CONFLICT (path, destination) DO UPDATE SET job_id = excluded.job_id, "
            "kind = excluded.kind, sop_instance_uid = excluded.sop_instance_uid, "
            "status = 'pending', attempts = 0, not_before = NULL, last_error = NULL, "
            "sent_at = NULL, updated_at = excluded.updated_at",
            (job_id, item.kind, str(item.path), item.sop_instance_uid, item.destination, now, now),
        )
        n += 1
    return n


class OutboundQueue(StoreBase):
    """Reads and updates the send queue; safe to share between threads.

    Raises (every method): StoreError.
    """

    def claim_due(self, destination: str, limit: int) -> list[Outbound]:
        """The pending rows for `destination` whose wait is over, oldest first."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT * FROM outbound WHERE status = 'pending' AND destination = ? AND "
                "(not_before IS NULL OR not_before <= ?) ORDER BY id LIMIT ?",
                (destination, self._now(), limit),
            ).fetchall()
        return [_outbound(r) for r in rows]

    def next_due(self, destination: str) -> datetime | None:
        """When the next pending row for `destination` is due (None: nothing pending)."""
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT MIN(COALESCE(not_before, '')) FROM outbound "
                "WHERE status = 'pending' AND destination = ?",
                (destination,),
            ).fetchone()
        value = row[0]
        if value is None:
            return None
        return self._clock() if value == "" else from_db_time(value)

    def mark_sent(self, row_id: int, *, warning: str | None = None) -> Outbound:
        """The PACS stored the object; `warning` is what a warning status said, if any."""
        now = self._now()
        return self._update(
            row_id,
            "status = 'sent', attempts = attempts + 1, sent_at = ?, not_before = NULL, "
            "last_error = ?, updated_at = ?",
            (now, warning, now),
        )

    def mark_retry(self, row_id: int, error: str, *, delay_s: float, max_attempts: int) -> Outbound:
        """The PACS refused the object: one attempt more; pending again after `delay_s`,
        or ``failed`` once `max_attempts` are used up. `error` says why (kept on the row)."""
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        now = self._clock()
        return self._update(
            row_id,
            "attempts = attempts + 1, status = CASE WHEN attempts + 1 >= ? THEN 'failed' "
            "ELSE 'pending' END, not_before = CASE WHEN attempts + 1 >= ? THEN NULL ELSE ? END, "
            "last_error = ?, updated_at = ?",
            (
                max_attempts,
                max_attempts,
                to_db_time(now + timedelta(seconds=max(0.0, delay_s))),
                error,
                to_db_time(now),
            ),
        )

    def mark_failed(self, row_id: int, error: str) -> Outbound:
        """Set the row aside at once (its file is gone: retrying cannot help)."""
        now = self._now()
        return self._update(
            row_id,
            "status = 'failed', attempts = attempts + 1, not_before = NULL, last_error = ?, "
            "updated_at = ?",
            (error, now),
        )

    def defer(self, row_ids: Sequence[int], error: str, *, delay_s: float) -> int:
        """The destination cannot take anything now: the rows wait `delay_s` more, `error`
        recorded, no attempt counted. Returns how many pending rows were deferred."""
        if not row_ids:
            return 0
        now = self._clock()
        marks = ", ".join("?" * len(row_ids))
        with self._db.write() as conn:
            cur = conn.execute(
                f"UPDATE outbound SET not_before = ?, last_error = ?, updated_at = ? "
                f"WHERE status = 'pending' AND id IN ({marks})",
                (
                    to_db_time(now + timedelta(seconds=max(0.0, delay_s))),
                    error,
                    to_db_time(now),
                    *row_ids,
                ),
            )
            return int(cur.rowcount)

    def retry(self, row_ids: Sequence[int] | None = None) -> list[Outbound]:
        """Put ``failed`` rows (all of them when `row_ids` is None) back as pending, due
        now, with their attempts reset. Returns the rows put back.

        Raises:
            StoreError: an id that names no row, or a row that is not failed.
        """
        now = self._now()
        with self._db.write() as conn:
            if row_ids is None:
                ids = [
                    r[0] for r in conn.execute("SELECT id FROM outbound WHERE status = 'failed'")
                ]
            else:
                ids = list(dict.fromkeys(row_ids))
                for row_id in ids:
                    row = conn.execute(
                        "SELECT status FROM outbound WHERE id = ?", (row_id,)
                    ).fetchone()
                    if row is None:
                        raise StoreError(
                            f"no outbound object has id {row_id}; `fame-node outbox list` "
                            "shows the ids",
                            path=self.path,
                        )
                    if row["status"] != "failed":
                        raise StoreError(
                            f"outbound object {row_id} is {row['status']}, not failed: only "
                            "failed objects are retried (pending ones are sent by themselves)",
                            path=self.path,
                        )
            for row_id in ids:
                conn.execute(
                    "UPDATE outbound SET status = 'pending', attempts = 0, not_before = NULL, "
                    "updated_at = ? WHERE id = ?",
                    (now, row_id),
                )
            return [_fetch(conn, row_id, self.path) for row_id in ids]

    def list_objects(
        self, status: OutboundStatus | None = None, *, job_id: int | None = None, limit: int = 100
    ) -> list[Outbound]:
        """Rows, newest first; only `status` / `job_id` when given."""
        if status is not None and status not in OUTBOUND_STATUSES:
            raise ValueError(f"status must be one of {OUTBOUND_STATUSES}, got {status!r}")
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        where: list[str] = []
        args: list[object] = []
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if job_id is not None:
            where.append("job_id = ?")
            args.append(job_id)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        with self._db.read() as conn:
            rows = conn.execute(
                f"SELECT * FROM outbound {clause}ORDER BY id DESC LIMIT ?", (*args, limit)
            ).fetchall()
        return [_outbound(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """How many rows are pending, sent and failed (every status present, 0 if none)."""
        with self._db.read() as conn:
            rows = conn.execute("SELECT status, COUNT(*) FROM outbound GROUP BY status").fetchall()
        found = {str(r[0]): int(r[1]) for r in rows}
        return {s: found.get(s, 0) for s in OUTBOUND_STATUSES}

    def get(self, row_id: int) -> Outbound:
        with self._db.read() as conn:
            return _fetch(conn, row_id, self.path)

    def _update(self, row_id: int, assignments: str, args: tuple[object, ...]) -> Outbound:
        with self._db.write() as conn:
            cur = conn.execute(f"UPDATE outbound SET {assignments} WHERE id = ?", (*args, row_id))
            if cur.rowcount != 1:
                raise StoreError(f"no outbound object has id {row_id}", path=self.path)
            return _fetch(conn, row_id, self.path)


def _fetch(conn: sqlite3.Connection, row_id: int, path: Path) -> Outbound:
    row = conn.execute("SELECT * FROM outbound WHERE id = ?", (row_id,)).fetchone()
    if row is None:
        raise StoreError(f"no outbound object has id {row_id}", path=path)
    return _outbound(row)


def _time(value: str | None) -> datetime | None:
    return None if value is None else from_db_time(value)


def _outbound(row: sqlite3.Row) -> Outbound:
    return Outbound(
        id=row["id"],
        job_id=row["job_id"],
        kind=row["kind"],
        path=Path(row["path"]),
        sop_instance_uid=row["sop_instance_uid"],
        destination=row["destination"],
        status=cast(OutboundStatus, row["status"]),
        attempts=row["attempts"],
        not_before=_time(row["not_before"]),
        last_error=row["last_error"],
        created_at=from_db_time(row["created_at"]),
        updated_at=from_db_time(row["updated_at"]),
        sent_at=_time(row["sent_at"]),
    )
