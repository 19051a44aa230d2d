"""The audit log: an append-only, hash-chained record of what the node decided and changed.

One row of ``audit`` (store schema v4) per event: every result stored, every job
rejected or failed, every review decision and undo, every model change, every federation
round. The table's triggers refuse UPDATE and DELETE; each row also carries

    sha256 = SHA-256 of the canonical JSON array
             [prev_sha256, at, actor, action, subject, detail]

where `detail` is the row's detail as stored (canonical JSON: sorted keys, no spaces,
ASCII) and `prev_sha256` the previous row's `sha256` (`GENESIS` for the first row). A row
changed or removed behind the triggers' back (a copy of the file edited with the triggers
dropped) breaks the chain there, and `verify` names that row. Removing the newest rows
leaves a shorter valid chain; keep the figure `verify` reports (rows, last digest) with
backups to notice that.

`append` runs inside the caller's write transaction (``Database.write()``), so the audit
row and the change it records are committed together or not at all, and the writer's
lock keeps the chain linear. `AuditLog` reads and verifies the log for ``fame-node
audit``. What each store records (results, job ends, reviews, model changes, federation
rounds) is in `appliance.store.audit_events`.

Privacy: `detail` carries job ids, content digests, model versions, decisions, flags and
counts, never patient names or IDs, file names or free text typed by a person (a review's
note is recorded as present or not). `check_detail` refuses keys and values that look
like them, so a caller's mistake fails a test instead of reaching the log.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from appliance.store.db import StoreBase, from_db_time, to_db_time, utc_now

GENESIS = "0" * 64
"""The `prev_sha256` of the first row."""

# Actions written by the node (others may be added; `check_action` sets their form).
RESULT = "result"
JOB_REJECTED = "job_rejected"
JOB_FAILED = "job_failed"
REVIEW = "review"
REVIEW_UNDONE = "review_undone"
MODEL_PREFIX = "model_"  # model_installed, model_activated, model_refused, ...
FEDERATION_ROUND = "federation_round"

_ACTION = re.compile(r"[a-z][a-z0-9_]{0,39}")
# Keys that would name a person or a file. Matched on the lower-cased key.
_FORBIDDEN_KEY = re.compile(r"patient|path|file|folder|_dir$|^dir$|^name$|^notes?$|^reason$|text")
# An absolute or home path, a Windows path, or a name with an image file's extension.
_PATH_LIKE = re.compile(
    r"^(/|~/|[A-Za-z]:[\\/])|\\|\.(dcm|dicom|png|jpe?g|bmp|tiff?)$", re.IGNORECASE
)
_MAX_DETAIL_CHARS = 16_384


@dataclass(frozen=True)
class AuditEntry:
    """One row of ``audit``; `detail` is parsed."""

    id: int
    at: datetime
    actor: str
    action: str
    subject: str | None
    detail: dict[str, Any]
    prev_sha256: str
    sha256: str


@dataclass(frozen=True)
class ChainReport:
    """What `verify` found: `ok`, how many rows it checked, the newest digest, and for a
    broken chain the first row that does not hold (`broken_id`) and why (`problem`)."""

    ok: bool
    rows: int
    last_sha256: str
    broken_id: int | None = None
    problem: str | None = None


def canonical_json(detail: Mapping[str, Any]) -> str:
    """`detail` as the one text it is stored and hashed as (sorted keys, ASCII, no NaN)."""
    return json.dumps(
        detail, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def entry_digest(
    prev_sha256: str, at: str, actor: str, action: str, subject: str | None, detail_json: str
) -> str:
    """The sha256 of a row: over a JSON array, so no field can run into the next."""
    fields = [prev_sha256, at, actor, action, subject, detail_json]
    blob = json.dumps(fields, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode("ascii")).hexdigest()


def check_action(action: str) -> str:
    if not _ACTION.fullmatch(action):
        raise ValueError(
            f"audit action {action!r} is not valid; expected lower-case letters, digits and "
            "underscores, starting with a letter, at most 40 characters (e.g. 'result')"
        )
    return action


def check_detail(detail: Mapping[str, Any], where: str = "detail") -> None:
    """Refuse what must not be in the audit log: keys that name people, files or free
    text, path-like strings, and values that are not plain JSON (finite numbers).

    Raises:
        ValueError: naming the key and what is expected instead.
    """
    for key, value in detail.items():
        if not isinstance(key, str):
            raise ValueError(f"audit {where}: keys must be strings, got {key!r}")
        if _FORBIDDEN_KEY.search(key.lower()):
            raise ValueError(
                f"audit {where}: the key {key!r} would record a patient, a file name or free "
                "text; record a job id, a sha256 digest, a decision or a count instead"
            )
        _check_value(value, f"{where}.{key}")


def _check_value(value: Any, where: str) -> None:
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"audit {where}: expected a finite number, got {value!r}")
        return
    if isinstance(value, str):
        if _PATH_LIKE.search(value) or not value.isprintable():
            raise ValueError(
                f"audit {where}: {value[:40]!r} looks like a path or holds control "
                "characters; the audit log records ids, digests and decisions, not file names"
            )
        return
    if isinstance(value, Mapping):
        check_detail(value, where)
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_value(item, f"{where}[{i}]")
        return
    raise ValueError(
        f"audit {where}: {type(value).__name__} cannot be recorded; expected None, a bool, "
        "a number, a string, a list or a mapping of those"
    )


def append(
    conn: sqlite3.Connection,
    actor: str,
    action: str,
    subject: str | None,
    detail: Mapping[str, Any] | None = None,
    *,
    at: str | None = None,
) -> AuditEntry:
    """Add one row to the audit log, inside the caller's open write transaction.

    `actor` is who or what acted (``node``, a reviewer's name, ``federation``); `subject`
    what it was about (``job:42``, ``model:name@1.0``, ``round:7``); `at` the caller's
    time stamp (`appliance.store.db.to_db_time`), default now.

    Raises:
        ValueError: no transaction is open (the row would commit apart from the change it
            records), or actor / action / detail are not what the log may hold.
    """
    if not conn.in_transaction:
        raise ValueError(
            "audit.append must run inside the caller's write transaction (Database.write()), "
            "so the audit row commits with the change it records; no transaction is open"
        )
    if not actor.strip() or not actor.isprintable():
        raise ValueError(f"an audit row needs a printable actor, got {actor!r}")
    check_action(action)
    if subject is not None and not subject.isprintable():
        raise ValueError(f"audit subject {subject!r} holds control characters")
    body = dict(detail or {})
    check_detail(body)
    detail_json = canonical_json(body)
    if len(detail_json) > _MAX_DETAIL_CHARS:
        raise ValueError(
            f"audit detail of {action!r} is {len(detail_json)} characters, more than "
            f"{_MAX_DETAIL_CHARS}; record counts or digests instead of whole lists"
        )
    stamp = at or to_db_time(utc_now())
    row = conn.execute("SELECT sha256 FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    prev = GENESIS if row is None else str(row[0])
    digest = entry_digest(prev, stamp, actor, action, subject, detail_json)
    cur = conn.execute(
        "INSERT INTO audit (at, actor, action, subject, detail, prev_sha256, sha256) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (stamp, actor, action, subject, detail_json, prev, digest),
    )
    return AuditEntry(
        id=int(cur.lastrowid or 0),
        at=from_db_time(stamp),
        actor=actor,
        action=action,
        subject=subject,
        detail=json.loads(detail_json),
        prev_sha256=prev,
        sha256=digest,
    )


def verify(conn: sqlite3.Connection) -> ChainReport:
    """Walk the whole chain, oldest first; the report names the first row that breaks it."""
    prev = GENESIS
    count = 0
    for row in conn.execute(
        "SELECT id, at, actor, action, subject, detail, prev_sha256, sha256 FROM audit ORDER BY id"
    ):
        count += 1
        if row[6] != prev:
            return ChainReport(
                False,
                count,
                prev,
                broken_id=int(row[0]),
                problem="its prev_sha256 is not the digest of the row before it (a row before "
                "it was removed or changed)",
            )
        expected = entry_digest(prev, row[1], row[2], row[3], row[4], row[5])
        if row[7] != expected:
            return ChainReport(
                False,
                count,
                prev,
                broken_id=int(row[0]),
                problem="its content does not match its sha256 (the row was changed)",
            )
        prev = str(row[7])
    return ChainReport(True, count, prev)


def read(
    conn: sqlite3.Connection,
    since: datetime | None = None,
    action: str | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """Rows at or after `since`, of one `action` (or all), oldest first, at most `limit`
    (the newest `limit` of them)."""
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    where: list[str] = []
    args: list[Any] = []
    if since is not None:
        where.append("at >= ?")
        args.append(to_db_time(since))
    if action is not None:
        where.append("action = ?")
        args.append(check_action(action))
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = conn.execute(
        f"SELECT * FROM (SELECT * FROM audit {clause} ORDER BY id DESC LIMIT ?) ORDER BY id",
        (*args, limit),
    ).fetchall()
    return [_entry(r) for r in rows]


def _entry(row: sqlite3.Row) -> AuditEntry:
    return AuditEntry(
        id=row["id"],
        at=from_db_time(row["at"]),
        actor=row["actor"],
        action=row["action"],
        subject=row["subject"],
        detail=json.loads(row["detail"]),
        prev_sha256=row["prev_sha256"],
        sha256=row["sha256"],
    )


class AuditLog(StoreBase):
    """The audit log over the node's database, for ``fame-node audit`` and the federation.

    Raises (every method): StoreError.
    """

    def read(
        self, since: datetime | None = None, action: str | None = None, limit: int = 100
    ) -> list[AuditEntry]:
        with self._db.read() as conn:
            return read(conn, since, action, limit)

    def verify(self) -> ChainReport:
        with self._db.read() as conn:
            return verify(conn)
