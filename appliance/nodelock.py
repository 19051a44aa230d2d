"""One service per store: an exclusive lock next to the database, saying who holds it.

`fame-node run` recovers the jobs an earlier run left ``running``; a second run on the
same store would take the first one's jobs from under it. So `run` takes an exclusive
`flock` on ``<database>.lock`` for as long as it lives, and writes into it who holds it
(pid, host, user, since). The kernel drops the lock when the process dies, however it
dies, so a stale lock file never blocks a restart. `fame-node process` does not take it:
it only runs the jobs it queues itself.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from appliance.errors import FameNodeError


class NodeLockedError(FameNodeError):
    """Another service holds the store's lock. `holder` is what it wrote, if readable."""

    def __init__(self, path: Path, holder: dict[str, Any] | None) -> None:
        self.path = path
        self.holder = holder
        who = (
            f"pid {holder.get('pid')} on {holder.get('host')} (user {holder.get('user')}, "
            f"since {holder.get('since')})"
            if holder
            else "another process"
        )
        super().__init__(
            f"another fame-node service already runs on this store: {who} holds {path}. "
            "Stop it first (systemctl stop fame-node), or give this one its own "
            "paths.root; two services on one store would take each other's jobs."
        )


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


def read_holder(path: Path) -> dict[str, Any] | None:
    """What the holder wrote into the lock file, or None."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class NodeLock:
    """``with NodeLock(db):`` holds the store's lock; raises `NodeLockedError` if taken."""

    def __init__(self, database: Path) -> None:
        self.path = lock_path(database)
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise NodeLockedError(self.path, read_holder(self.path)) from None
        except BaseException:
            os.close(fd)
            raise
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "user": _user(),
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode("utf-8"), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.ftruncate(fd, 0)
            os.close(fd)  # closing drops the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _user() -> str:
    try:
        import getpass

        return getpass.getuser()
    except (OSError, KeyError):
        return f"uid {os.getuid()}"
