"""The SQLite file behind the job queue and the results: connections, schema, time stamps.

`Database` owns one connection (WAL journal, a busy timeout, foreign keys on) behind a
lock, so one object may be shared by several threads of a process; a second process (the
GUI, `fame-node status`) opens its own and reads while the service writes. `write()` is
a ``BEGIN IMMEDIATE`` transaction: it takes the write lock at once, so a read followed by
a write inside it cannot be overtaken by another writer.

The schema is versioned (`appliance.store.schema`). `MIGRATIONS` is an ordered tuple;
migration *n* takes the schema
from version *n - 1* to *n*, and each applied one adds a row to ``schema_version``. They
run in one transaction when the file is opened, so a failed upgrade leaves the file as it
was. A file written by a newer FAME Node (a version beyond `SCHEMA_VERSION`) is refused.

Time stamps are ISO 8601 UTC text with microseconds and a ``Z`` (fixed width, so they sort
as text); every write takes its time from a clock the caller may replace.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from appliance.closing import Closing
from appliance.errors import FameNodeError
from appliance.store.schema import MIGRATIONS, Migration

log = logging.getLogger("fame_node.store")

Clock = Callable[[], datetime]
"""Returns the current time (timezone-aware); tests pass their own to control ordering."""


DEFAULT_BUSY_TIMEOUT_S = 10.0


class StoreError(FameNodeError):
    """The job queue / results database cannot do what was asked.

    `path` is the database file when known. `transient` is true for a passing fault of the
    database file (locked by another process past the busy timeout, disk full, I/O error):
    the same call may succeed later; the node retries rather than failing a job.
    """

    def __init__(self, message: str, *, path: Path | None = None, transient: bool = False) -> None:
        self.path = path
        self.transient = transient
        super().__init__(message)


# SQLite result codes (primary, the low byte) of faults that pass: busy / locked, I/O,
# disk full, cannot open (a folder briefly unavailable), read-only (a remount).
_TRANSIENT_SQLITE_CODES = frozenset({5, 6, 10, 13, 14, 8})


def is_transient_sqlite(exc: sqlite3.Error) -> bool:
    """True when `exc` is a fault of the moment, not of the data or the query."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return (code & 0xFF) in _TRANSIENT_SQLITE_CODES
    text = str(exc).lower()
    return any(w in text for w in ("locked", "busy", "disk i/o", "full", "unable to open"))


class SchemaTooNewError(StoreError):
    """The database was written by a newer FAME Node than this one."""

    def __init__(self, path: Path, found: int, supported: int) -> None:
        self.found = found
        self.supported = supported
        super().__init__(
            f"the database {path} has schema version {found}, but this FAME Node understands "
            f"versions up to {supported}: it was written by a newer FAME Node. Upgrade FAME "
            "Node, or configure another database file; this one was left unchanged.",
            path=path,
        )


def utc_now() -> datetime:
    """The current time, UTC."""
    return datetime.now(UTC)


def to_db_time(moment: datetime) -> str:
    """``2025-01-31T12:00:00.123456Z``; a naive `moment` is refused (its zone is unknown)."""
    if moment.tzinfo is None:
        raise ValueError(
            f"expected a timezone-aware datetime, got the naive {moment!r}; "
            "use datetime.now(UTC) or attach a tzinfo"
        )
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def from_db_time(text: str) -> datetime:
    """The inverse of `to_db_time` (timezone-aware UTC)."""
    return datetime.fromisoformat(text)


def _current_version(conn: sqlite3.Connection) -> int:
    has_table = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if has_table is None:
        return 0
    row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
    return int(row[0])


def migrate(
    conn: sqlite3.Connection,
    path: Path,
    migrations: Sequence[Migration] = MIGRATIONS,
    *,
    clock: Clock = utc_now,
) -> int:
    """Bring the schema up to ``len(migrations)``, all in one transaction; return the version.

    Raises:
        SchemaTooNewError: the file has a higher version than `migrations` reaches.
    """
    target = len(migrations)
    current = _current_version(conn)  # a cheap read first: most opens need no write lock
    if current > target:
        raise SchemaTooNewError(path, current, target)
    if current == target:
        return current
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            "version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        current = _current_version(conn)  # another process may have migrated meanwhile
        if current > target:
            raise SchemaTooNewError(path, current, target)
        for version in range(current + 1, target + 1):
            migrations[version - 1](conn)
            conn.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (version, to_db_time(clock())),
            )
            log.info("database %s: schema migrated to version %d", path, version)
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    return target


def _rollback(conn: sqlite3.Connection) -> None:
    # SQLite rolls back by itself after some errors (disk full, I/O); then there is none.
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def connect(
    path: Path,
    *,
    busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
    migrations: Sequence[Migration] = MIGRATIONS,
) -> sqlite3.Connection:
    """Open (creating if needed) the database at `path` and bring its schema up to date.

    The connection is in autocommit mode (``isolation_level=None``): transactions are
    explicit. It may be used from any thread, one at a time (see `Database`).

    Raises:
        StoreError: the folder is missing, the file is not an SQLite database, or it is
            locked by another process for longer than `busy_timeout_s`.
        SchemaTooNewError: the file was written by a newer FAME Node.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise StoreError(
            f"the folder of the database {path} does not exist; create {path.parent} "
            "or configure another database path",
            path=path,
        )
    try:
        conn = sqlite3.connect(
            str(path), timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the database {path}: {exc}", path=path) from exc
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            # Network file systems cannot share WAL memory; SQLite then keeps its journal.
            log.warning(
                "database %s: WAL journal not available (journal_mode=%s); readers will "
                "wait for writers. Keep the database on a local disk.",
                path,
                mode,
            )
        # FULL: a committed job survives a power cut, not only a crash of the process.
        conn.execute("PRAGMA synchronous = FULL")
        migrate(conn, path, migrations)
    except StoreError:
        conn.close()
        raise
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreError(
            _describe(exc, path, busy_timeout_s), path=path, transient=is_transient_sqlite(exc)
        ) from exc
    return conn


def _describe(exc: sqlite3.Error, path: Path, busy_timeout_s: float) -> str:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return (
            f"the database {path} stayed locked by another process for more than "
            f"{busy_timeout_s:g} s ({text}); check that only one FAME Node service uses it"
        )
    if "not a database" in text or "malformed" in text:
        return (
            f"{path} is not a FAME Node database or is damaged ({text}); move it aside "
            "(the node then starts a new one) or restore it from a backup"
        )
    return f"database error on {path}: {text}"


class Database(Closing):
    """One connection to the store, shared by the threads of a process under a lock.

    Every SQLite error raised inside `read()` / `write()` comes out as `StoreError`,
    after the transaction was rolled back.
    """

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> None:
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        self._conn = connect(self.path, busy_timeout_s=busy_timeout_s, migrations=migrations)
        # Re-entrant: a method holding a transaction may call a helper that reads.
        self._lock = threading.RLock()
        self._closed = False

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction, committed at the end, rolled back on error."""
        with self._transaction("BEGIN IMMEDIATE") as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees the same snapshot."""
        with self._transaction("BEGIN") as conn:
            yield conn

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise StoreError(f"the database {self.path} was closed", path=self.path)
            conn = self._conn
            try:
                conn.execute(begin)
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
            try:
                yield conn
            except sqlite3.Error as exc:
                _rollback(conn)
                raise self._error(exc) from exc
            except BaseException:
                _rollback(conn)
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(conn)
                raise self._error(exc) from exc

    def _error(self, exc: sqlite3.Error) -> StoreError:
        return StoreError(
            _describe(exc, self.path, self._busy_timeout_s),
            path=self.path,
            transient=is_transient_sqlite(exc),
        )

    def close(self) -> None:
        """Close the connection; later calls raise `StoreError`. Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()


class StoreBase(Closing):
    """What every store over the node's database shares: its `Database`, a clock, and
    closing (directly or as a context manager). Subclasses add the table-specific API."""

    def __init__(
        self,
        db_path: Path,
        *,
        clock: Clock = utc_now,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
    ) -> None:
        self._db = Database(db_path, busy_timeout_s=busy_timeout_s)
        self._clock = clock

    @property
    def path(self) -> Path:
        return self._db.path

    def _now(self) -> str:
        return to_db_time(self._clock())

    def close(self) -> None:
        self._db.close()
