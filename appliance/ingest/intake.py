"""Intake: turn a candidate file from the inbox into a job (or a recorded rejection).

`Intake.submit` looks at the file without following links (`os.lstat`), skips it when
this very file (path, size, modification time) is already a job, else copies it into the
node's spool while hashing the copy (`appliance.ingest.snapshot`) and enqueues the copy:
the job analyses exactly the bytes it was queued with, whatever later happens to the
inbox file. The queue decides whether the content is new or a duplicate.

Answers: a link, FIFO, socket or device, a file over ``ingest.max_input_bytes``, one
that vanished or cannot be read are recorded as ``rejected`` with a reason for a person,
so nothing disappears silently. A file still being written, or a spool that cannot be
written (disk full), is not recorded: `submit` raises `TransientError` and the watcher
offers the file again later. Zero-byte files are queued like any other: the reader
rejects them with its own reason.

Log lines name files by the pseudonym `label` gives, never by their names (which a PACS
may build from patient names). The inbox file is only read, never changed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from appliance.errors import InputError
from appliance.ingest.snapshot import Spool
from appliance.store.jobs import EnqueueOutcome, Job, JobQueue

log = logging.getLogger("fame_node.ingest")

DEFAULT_MAX_INPUT_BYTES = 1 << 30


class Intake:
    """Snapshots candidate files and records them in the queue. Safe from any thread.

    Args:
        queue: the job queue.
        spool: where the copies go (``work/spool``).
        inbox: the folder files must lie in without passing through a link; None for
            files named on the command line (``fame-node process``), which may be anywhere.
        max_bytes: larger files are rejected unread.
        label: names a file in log lines; the service passes a pseudonymiser.
    """

    def __init__(
        self,
        queue: JobQueue,
        spool: Spool,
        *,
        inbox: Path | None = None,
        max_bytes: int = DEFAULT_MAX_INPUT_BYTES,
        label: Callable[[Path], str] | None = None,
    ) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1 byte, got {max_bytes}")
        self.queue = queue
        self.spool = spool
        self._inbox = None if inbox is None else Path(os.path.realpath(inbox))
        self._max_bytes = max_bytes
        self._label: Callable[[Path], str] = label or (lambda p: "file")

    def submit(self, path: Path, *, inside_inbox: bool = True) -> EnqueueOutcome | Job:
        """Record `path` in the queue.

        `inside_inbox` False: a file named by IT staff on the command line; it need not
        lie in the inbox (it is still never followed through a link).

        Returns the `EnqueueOutcome` (queued, duplicate, or `already_seen`), or the
        ``rejected`` `Job` recorded when the file cannot be taken.

        Raises:
            TransientError: not recorded now (still being written, spool not writable);
                offer the file again later.
            StoreError: the database could not be written.
        """
        path = Path(path)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            seen = self.queue.path_seen(path, st.st_size, st.st_mtime_ns)
            if seen is not None:
                log.debug(
                    "%s is already job %d (%s); not queued again",
                    self._label(path),
                    seen.id,
                    seen.status,
                )
                return EnqueueOutcome(seen, duplicate_of=seen.duplicate_of, already_seen=True)
        try:
            snap = self.spool.take(
                path, max_bytes=self._max_bytes, inbox=self._inbox if inside_inbox else None
            )
        except InputError as exc:
            return self._reject(path, exc, st)
        outcome = self.queue.enqueue(path, snap.sha256, snap.size, snap.mtime_ns, snap.spool_path)
        if outcome.duplicate_of is not None:
            self._release(outcome.job)
            log.info(
                "%s: same content as job %d; recorded as duplicate job %d",
                self._label(path),
                outcome.duplicate_of,
                outcome.id,
            )
        else:
            log.info("%s queued as job %d (%d bytes)", self._label(path), outcome.id, snap.size)
        return outcome

    def _release(self, job: Job) -> None:
        """A duplicate needs no copy: drop it unless a job that may still run reads it."""
        copy = self.spool.path_for(job.sha256 or "")
        if job.sha256 and not self.queue.spool_in_use(copy):
            self.spool.remove(copy)

    def _reject(self, path: Path, exc: InputError, st: os.stat_result | None) -> Job:
        job = self.queue.record_rejected(
            path,
            exc.code,
            exc.reason,
            size=None if st is None else st.st_size,
            mtime_ns=None if st is None else st.st_mtime_ns,
        )
        log.warning("%s rejected as job %d (%s): %s", self._label(path), job.id, exc.code, exc)
        return job
