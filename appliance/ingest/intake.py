"""Intake: turn a candidate file from the inbox into a job (or a recorded rejection).

`Intake.submit` stats the file, skips it when this very file (path, size, modification
time) is already a job, else streams its sha256 and enqueues it; the queue decides
whether the content is new or a duplicate. A file that vanished or cannot be read is
recorded as ``rejected`` with a reason for a person, so nothing disappears silently.
Zero-byte files are queued like any other: the reader rejects them with its own reason.

The inbox file is only read, never changed.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from appliance.errors import UnreadableFileError
from appliance.store.jobs import EnqueueOutcome, Job, JobQueue

log = logging.getLogger("fame_node.ingest")

CHUNK_SIZE = 1 << 20
# A file still being rewritten while hashed is hashed again, this many times at most.
_HASH_TRIES = 3


def _node_user() -> str:
    try:
        return getpass.getuser()
    except OSError:  # no login name for this uid (some containers)
        return f"uid {os.getuid()}"


class Intake:
    """Hashes candidate files and records them in the queue. Safe to call from any thread."""

    def __init__(
        self,
        queue: JobQueue,
        *,
        chunk_size: int = CHUNK_SIZE,
        label: Callable[[Path], str] | None = None,
    ) -> None:
        """`label` names a file in log lines; the service passes a pseudonymiser, since
        file names exported by a PACS may contain patient names."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 byte, got {chunk_size}")
        self.queue = queue
        self._chunk_size = chunk_size
        self._label: Callable[[Path], str] = label or (lambda p: p.name)

    def submit(self, path: Path) -> EnqueueOutcome | Job:
        """Record `path` in the queue.

        Returns the `EnqueueOutcome` (queued, duplicate, or `already_seen`), or the
        ``rejected`` `Job` recorded when the file could not be read.

        Raises:
            StoreError: the database could not be written.
        """
        path = Path(path)
        try:
            return self._submit(path)
        except FileNotFoundError:
            return self._reject(
                path,
                "the file disappeared from the inbox before the node could read it (moved or "
                "deleted by another program, or renamed by the program that wrote it). If it "
                "still needs to be processed, drop it into the inbox again.",
            )
        except PermissionError:
            user = _node_user()
            return self._reject(
                path,
                f"permission denied: the node runs as user '{user}', which may not read this "
                f"file. Grant '{user}' read access to the file (and its folders), then drop "
                "the file into the inbox again.",
            )
        except IsADirectoryError:
            return self._reject(path, "this is a folder, not a file; only files are processed.")
        except OSError as exc:
            return self._reject(
                path,
                f"the file could not be read ({exc.strerror or exc}). Check the disk or the "
                "network share, then drop the file into the inbox again.",
            )

    def _submit(self, path: Path) -> EnqueueOutcome | Job:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return self._reject(
                path, "this is not a regular file (a folder, device or pipe); it is ignored."
            )
        seen = self.queue.path_seen(path, st.st_size, st.st_mtime_ns)
        if seen is not None:
            log.debug(
                "%s is already job %d (%s); not queued again",
                self._label(path),
                seen.id,
                seen.status,
            )
            return EnqueueOutcome(seen, duplicate_of=seen.duplicate_of, already_seen=True)
        sha256, size, mtime_ns = self._hash(path)
        outcome = self.queue.enqueue(path, sha256, size, mtime_ns)
        if outcome.duplicate_of is not None:
            log.info(
                "%s: same content as job %d; recorded as duplicate",
                self._label(path),
                outcome.duplicate_of,
            )
        else:
            log.info("%s queued as job %d (%d bytes)", self._label(path), outcome.id, size)
        return outcome

    def _hash(self, path: Path) -> tuple[str, int, int]:
        """(sha256, size, mtime_ns) of the content read; read again while the file changes."""
        with open(path, "rb") as f:
            result, stable = self._hash_once(f)
            tries = 1
            while not stable and tries < _HASH_TRIES:
                result, stable = self._hash_once(f)
                tries += 1
        if not stable:
            log.warning(
                "%s kept changing while it was hashed; queued as last read", self._label(path)
            )
        return result

    def _hash_once(self, f: BinaryIO) -> tuple[tuple[str, int, int], bool]:
        before = os.fstat(f.fileno())
        f.seek(0)
        digest = hashlib.sha256()
        size = 0
        while chunk := f.read(self._chunk_size):
            digest.update(chunk)
            size += len(chunk)
        after = os.fstat(f.fileno())
        stable = before.st_size == after.st_size == size and before.st_mtime_ns == after.st_mtime_ns
        return (digest.hexdigest(), size, after.st_mtime_ns), stable

    def _reject(self, path: Path, reason: str) -> Job:
        job = self.queue.record_rejected(path, UnreadableFileError.code, reason)
        log.warning("%s rejected as job %d: %s", self._label(path), job.id, reason)
        return job
