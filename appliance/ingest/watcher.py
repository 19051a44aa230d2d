"""The inbox watcher: finds complete files in the drop folder and hands them on, once each.

Two ways in, because neither is enough alone:

* **Events** (watchdog, inotify on Linux), recursive. A writer that writes ``x.part``
  then renames it shows up as a ``FileMovedEvent`` to ``x`` and is taken at once; a file
  moved in from outside the inbox is a move with no source. A finished write is a
  ``FileClosedEvent`` (the writer closed a file it had open for writing), but a writer may
  close and reopen a file to append to it: a closed file is taken once it has stayed
  unchanged for `close_settle_s`, so that a slow writer gives one job, not one per chunk.
  Created / modified events are ignored: the file may be incomplete. Files inside a folder
  moved into the inbox come as synthetic created events and are complete, so they are
  taken. If the inbox folder is deleted and created again, the watcher notices within a
  second and watches the new folder (inotify watches the old one's inode).
* **Scans**: one at start (everything already there: the node may have been down), then
  one every `rescan_interval_s` for network shares, where inotify sees nothing. A file
  found by a scan is taken only once it is *stable*: its modification time is at least
  `settle_s` old and its size and modification time are what the previous look found.
  (The first scan needs only the age. A file seen unchanged by our own looks for
  `settle_s` also counts as settled, whatever its mtime says: a share's clock may run
  ahead.) A file not yet stable is looked at again by the next scan: two looks a whole
  interval apart, so that a writer that stalls for a few seconds is not mistaken for a
  finished one.

The watcher hands each (path, size, mtime_ns) to `on_candidate` at most once; recognising
the same content under another name is the queue's job. Links and special files (FIFOs,
sockets, devices) are never followed or opened here: they are looked at with `lstat` and
handed on like files, so that the intake records why it refuses them. Ignored: folders,
hidden files and folders (name starts with ``.``), and names ending in ``.part``, ``.tmp``,
``.partial``, ``.crdownload``, ``.filepart`` or ``~``. An exception in `on_candidate` is
logged and the file is offered again by a later scan (a `TransientError`, such as a file
still being written or a full disk, without a traceback); it never stops the watcher.

The watcher never changes or deletes anything in the inbox.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver

from appliance.errors import FameNodeError, TransientError

log = logging.getLogger("fame_node.ingest")

IGNORED_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload", ".filepart", "~")

Candidate = Callable[[Path], None]
"""Called with the path of a complete file found in the inbox."""

_Signature = tuple[int, int]  # (size, mtime_ns)
_VANISHED: _Signature = (-1, -1)  # a closed / moved-in file that was gone when we looked
_TICK_S = 0.2  # how often settling closed files and the inbox folder itself are looked at


class InboxError(FameNodeError):
    """The inbox folder cannot be watched (missing, or not a folder)."""

    def __init__(self, message: str, *, inbox: Path) -> None:
        self.inbox = inbox
        super().__init__(message)


def is_candidate(path: Path, inbox: Path) -> bool:
    """True when `path` (below `inbox`) names a file the node should look at.

    Pure: looks at the name only. False for paths outside `inbox`, for anything in a
    hidden folder, hidden files and the temporary names of writers.
    """
    try:
        parts = path.relative_to(inbox).parts
    except ValueError:
        return False
    if not parts or any(part.startswith(".") for part in parts):
        return False
    return not parts[-1].lower().endswith(IGNORED_SUFFIXES)


def _make_observer() -> BaseObserver:
    if sys.platform.startswith("linux"):
        from watchdog.observers.inotify import InotifyObserver

        # Full events: a file moved in from outside the inbox is a move (to dest_path),
        # not a "created" event that looks like the start of a write.
        return InotifyObserver(generate_full_events=True)
    from watchdog.observers import Observer

    return Observer()


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: InboxWatcher) -> None:
        self._watcher = watcher

    def dispatch(self, event: FileSystemEvent) -> None:
        # An exception here would end watchdog's dispatch thread: never let one out.
        try:
            if event.is_directory:
                return
            if isinstance(event, FileClosedEvent):
                self._watcher._settle_closed(Path(os.fsdecode(event.src_path)))
                return
            path = self._complete_file(event)
            if path is not None:
                self._watcher._offer_event(Path(os.fsdecode(path)))
        except Exception:
            log.exception("error while handling inbox event %s", type(event).__name__)

    @staticmethod
    def _complete_file(event: FileSystemEvent) -> bytes | str | None:
        if isinstance(event, FileMovedEvent):
            return event.dest_path or None  # no dest: moved out of the inbox
        if isinstance(event, FileCreatedEvent) and event.is_synthetic:
            return event.src_path  # inside a folder that was moved in: already complete
        return None


class InboxWatcher:
    """Watches `inbox` (recursively) and calls `on_candidate` once for each complete file.

    Args:
        inbox: the drop folder; it must exist when `start()` is called.
        on_candidate: called from the watcher's threads (the event thread and the scan
            thread, possibly at the same time), so it must be thread-safe.
        rescan_interval_s: seconds between full scans of the inbox.
        settle_s: how old a file's modification time must be before a scan takes it.
        close_settle_s: how long a file closed by its writer must stay unchanged before
            it is taken (a writer may reopen it to append).
        use_observer: False to rely on scans only (tests; file systems without events).
    """

    def __init__(
        self,
        inbox: Path,
        on_candidate: Candidate,
        *,
        rescan_interval_s: float = 30.0,
        settle_s: float = 1.0,
        close_settle_s: float = 1.0,
        use_observer: bool = True,
    ) -> None:
        if rescan_interval_s <= 0:
            raise ValueError(f"rescan_interval_s must be > 0 seconds, got {rescan_interval_s}")
        if settle_s < 0:
            raise ValueError(f"settle_s must be >= 0 seconds, got {settle_s}")
        if close_settle_s < 0:
            raise ValueError(f"close_settle_s must be >= 0 seconds, got {close_settle_s}")
        # Resolved: inotify does not follow a symlinked inbox, and events then carry the
        # same prefix as the paths found by scans.
        self.inbox = Path(inbox).expanduser().resolve()
        self._on_candidate = on_candidate
        self._rescan_interval_s = rescan_interval_s
        self._settle_s = settle_s
        self._close_settle_s = close_settle_s
        self._use_observer = use_observer
        # Closed by their writer, waiting to stay unchanged: signature, since (monotonic).
        self._closing: dict[Path, tuple[_Signature, float]] = {}
        self._inbox_id: tuple[int, int] | None = None  # (st_dev, st_ino) being watched

        self._lock = threading.Lock()
        self._submitted: dict[Path, _Signature] = {}  # what on_candidate was given
        # Seen by a scan, not yet stable: signature, and when first seen with it (monotonic).
        self._pending: dict[Path, tuple[_Signature, int]] = {}
        self._scanned = False  # the first scan takes every file old enough
        self._unlistable: set[str] = set()  # folders already warned about

        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._observer: BaseObserver | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start watching; the first scan runs in the background. Returns at once.

        Raises:
            InboxError: the inbox does not exist or is not a folder.
        """
        if self._thread is not None:
            raise RuntimeError("this InboxWatcher is already started")
        if not self.inbox.is_dir():
            raise InboxError(
                f"the inbox {self.inbox} does not exist or is not a folder; create it (the "
                "folder the PACS exports into) or correct the configured inbox path",
                inbox=self.inbox,
            )
        self._stop.clear()
        self._inbox_id = _identity(self.inbox)
        # Events first, then the first scan: a file finished in between is seen by one.
        if self._use_observer:
            self._observer = self._start_observer()
        self._thread = threading.Thread(target=self._run, name="fame-inbox-scan", daemon=True)
        self._thread.start()
        log.info(
            "watching %s (%s; full scan every %g s)",
            self.inbox,
            "events and scans" if self._observer is not None else "scans only",
            self._rescan_interval_s,
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Stop watching and join the threads (waits for an `on_candidate` in progress)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(max(0.0, deadline - time.monotonic()))
            self._observer = None
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
            if self._thread.is_alive():
                log.warning("inbox scan thread still busy after %g s; left to finish", timeout)
            self._thread = None

    def __enter__(self) -> InboxWatcher:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _start_observer(self) -> BaseObserver | None:
        try:
            observer = _make_observer()
            observer.schedule(_Handler(self), str(self.inbox), recursive=True)
            observer.start()
        except OSError as exc:  # e.g. inotify watch limit reached
            log.warning(
                "cannot watch %s for events (%s); new files are found by the scan every %g s. "
                "Raise fs.inotify.max_user_watches to get events back.",
                self.inbox,
                exc,
                self._rescan_interval_s,
            )
            return None
        return observer

    def _run(self) -> None:
        next_scan = 0.0
        while not self._stop.is_set():
            try:
                self._check_inbox()
                self._offer_settled()
                if time.monotonic() >= next_scan:
                    self.scan_once()
                    next_scan = time.monotonic() + self._rescan_interval_s
            except Exception:  # the thread must outlive any one bad scan
                log.exception("error while scanning the inbox %s", self.inbox)
            self._stop.wait(_TICK_S)

    def _check_inbox(self) -> None:
        """Watch the inbox again if it was deleted and created anew (another inode)."""
        current = _identity(self.inbox)
        if current == self._inbox_id:
            return
        self._inbox_id = current
        if current is None:
            log.warning("the inbox %s is gone; waiting for it to be created again", self.inbox)
            return
        log.warning("the inbox %s was created anew; watching the new folder", self.inbox)
        old, self._observer = self._observer, None
        if old is not None:
            old.stop()
            old.join(2.0)
        if self._use_observer:
            self._observer = self._start_observer()
        self.scan_once()  # what was written before the new watch started

    def _settle_closed(self, path: Path) -> None:
        """A writer closed `path`: take it once it stays unchanged for close_settle_s."""
        if not is_candidate(path, self.inbox):
            return
        signature = _signature(path)
        if signature is None:
            self._offer_event(path)  # gone already, or not a file: answered at once
            return
        with self._lock:
            self._closing[path] = (signature, time.monotonic())
        if self._close_settle_s == 0:
            self._offer_settled()

    def _offer_settled(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [
                (p, sig)
                for p, (sig, since) in self._closing.items()
                if now - since >= self._close_settle_s
            ]
        for path, signature in due:
            current = _signature(path)
            with self._lock:
                if self._closing.get(path, (None, 0.0))[0] != signature:
                    continue  # closed again meanwhile: its newer entry is waiting
                if current != signature and current is not None:
                    self._closing[path] = (current, now)  # changed without an event
                    continue
                del self._closing[path]
            if current is None:
                self._offer_event(path)
            else:
                self._offer(path, current)

    # -- finding files ---------------------------------------------------------------------

    def scan_once(self) -> list[Path]:
        """Walk the inbox once and offer every stable, not yet offered file.

        Returns the files handed to `on_candidate` by this call. Safe to call from any
        thread, started or not.
        """
        now_ns = time.time_ns()
        with self._lock:
            first = not self._scanned
            self._scanned = True
        found: set[Path] = set()
        offered: list[Path] = []
        for path in self._walk():
            if self._stop.is_set():
                return offered
            signature = _signature(path)
            if signature is None:
                continue
            found.add(path)
            if self._consider(path, signature, now_ns, need_previous=not first):
                offered.append(path)
        self._forget_missing(found)
        return offered

    def _consider(
        self, path: Path, signature: _Signature, now_ns: int, *, need_previous: bool
    ) -> bool:
        settle_ns = self._settle_s * 1e9
        with self._lock:
            if self._submitted.get(path) == signature:
                self._pending.pop(path, None)
                return False
            previous = self._pending.get(path)
            unchanged = previous is not None and previous[0] == signature
            # Unchanged for settle_s by its mtime, or by our own looks (a network share's
            # clock may run ahead of ours and put mtimes in the future).
            age_ns = now_ns - signature[1]
            if unchanged and previous is not None:
                age_ns = max(age_ns, time.monotonic_ns() - previous[1])
            if age_ns < settle_ns or (need_previous and not unchanged):
                if not unchanged:
                    self._pending[path] = (signature, time.monotonic_ns())
                return False
        return self._offer(path, signature)

    def _offer_event(self, path: Path) -> None:
        if not is_candidate(path, self.inbox):
            return
        signature = _signature(path)
        if signature is not None:
            self._offer(path, signature)
        elif not os.path.lexists(path):
            # Written completely, then gone before we looked: hand it on all the same, so
            # the intake records that it vanished instead of it disappearing silently.
            self._offer(path, _VANISHED)

    def _offer(self, path: Path, signature: _Signature) -> bool:
        """Hand `path` to on_candidate unless this (path, size, mtime) already was."""
        with self._lock:
            if self._submitted.get(path) == signature:
                return False
            self._submitted[path] = signature
            self._pending.pop(path, None)
        try:
            self._on_candidate(path)
        except TransientError as exc:
            log.warning("a file is not taken yet (%s); it is tried again by the next scan", exc)
            with self._lock:
                if self._submitted.get(path) == signature:
                    del self._submitted[path]
            return False
        except Exception:
            log.exception("error while handing on a file; it is tried again by the next scan")
            with self._lock:
                if self._submitted.get(path) == signature:
                    del self._submitted[path]
            return False
        return True

    def _walk(self) -> Iterator[Path]:
        def on_error(exc: OSError) -> None:
            name = str(exc.filename)
            with self._lock:
                if name in self._unlistable:
                    return
                self._unlistable.add(name)
            # A folder's name may be a patient's (per-patient export folders): not logged.
            log.warning(
                "cannot list a folder of the inbox (%s); files below it are not seen", exc.strerror
            )

        for root, dirs, files in os.walk(self.inbox, onerror=on_error):
            # os.walk lists a link to a folder among `dirs` and does not follow it: it is
            # handed on as an entry (refused by the intake), never walked into.
            links = [d for d in dirs if os.path.islink(os.path.join(root, d))]
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in links)
            for name in sorted([*files, *links]):
                path = Path(root, name)
                if is_candidate(path, self.inbox):
                    yield path

    def _forget_missing(self, found: set[Path]) -> None:
        # Keep memory bounded by what is in the inbox. A path an event added after the walk
        # passed its folder still exists, so it is kept.
        with self._lock:
            gone = [p for p in (*self._submitted, *self._pending) if p not in found]
        gone = [p for p in gone if not os.path.lexists(p)]
        with self._lock:
            for path in gone:
                self._submitted.pop(path, None)
                self._pending.pop(path, None)
                self._closing.pop(path, None)


def _signature(path: Path) -> _Signature | None:
    """(size, mtime_ns) of the entry itself (`lstat`: a link is not followed), or None if
    it is gone or a folder. Links and special files have one too: they get an answer."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode):
        return None
    return st.st_size, st.st_mtime_ns


def _identity(folder: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None
