"""The node's own copy of an inbox file: the bytes hashed are the bytes analysed.

`Spool.take` opens an inbox file without following links and without blocking (a FIFO
put in place of a file must not hang the node), checks that it is a regular file below
the inbox no larger than the configured limit, and copies it into ``work/spool/`` while
hashing what it copies. The copy is named by its sha256 and written durably (fsync of the
file and the folder) before the job that points at it is committed. Workers read only
the copy: a file replaced, rewritten or removed in the inbox after intake cannot change
what a queued job analyses, and a file that changes *while* it is copied is not taken
(the watcher offers it again once it is stable).

Refusals are `InputError`s (the job is recorded ``rejected`` with the reason): a symbolic
link or special file (`NotRegularFileError`), a file beyond the size limit
(`ImageTooLargeError`, refused unread), an unreadable file (`UnreadableFileError`). A
fault of the node's own folder (disk full, I/O error) is a `TransientError`: nothing is
recorded and the file is taken later. Reasons never quote the file's content or name.

The inbox file is only read, never changed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import (
    PASSING_ERRNOS,
    ImageTooLargeError,
    InputError,
    NotRegularFileError,
    TransientError,
)
from appliance.io.files import describe_kind, unreadable_error
from appliance.results.durable import sync_folder

CHUNK_SIZE = 1 << 20
# A file rewritten while it is copied is copied again, this many times at most.
_COPY_TRIES = 3
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


class FileStillChangingError(TransientError):
    """The file changed while it was copied: a writer is still at work. Taken later."""


@dataclass(frozen=True)
class Snapshot:
    """What intake copied: the digest and size of the bytes in `spool_path`."""

    sha256: str
    size: int
    mtime_ns: int
    spool_path: Path


def check_regular(path: Path, st: os.stat_result, inbox: Path | None) -> None:
    """Raise `NotRegularFileError` unless `st` (an lstat) is a regular file whose folder
    lies inside `inbox` without passing through a link (None: no inbox to stay in)."""
    if not stat.S_ISREG(st.st_mode):
        kind = describe_kind(st.st_mode)
        advice = (
            "the node reads only regular files placed in the inbox and never follows links "
            "(a link could point at any file of the machine): copy the image file itself "
            "into the inbox"
            if stat.S_ISLNK(st.st_mode)
            else "the node reads only regular files: export the image as a file"
        )
        raise NotRegularFileError(f"this is {kind}, not an image file; {advice}", path=path)
    if inbox is not None:
        if not Path(os.path.abspath(path)).is_relative_to(inbox):
            raise NotRegularFileError(
                f"the file is not in the inbox ({inbox}); the node takes files from the inbox "
                "only: copy it there, or name it to `fame-node process`",
                path=path,
            )
        if not Path(os.path.realpath(path.parent)).is_relative_to(inbox):
            raise NotRegularFileError(
                "the file lies in a folder that links out of the inbox; the node never "
                "follows links: copy the image file itself into the inbox",
                path=path,
            )


class Spool:
    """Content-addressed copies of inbox files under `folder` (``work/spool``)."""

    def __init__(self, folder: Path, *, chunk_size: int = CHUNK_SIZE) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 byte, got {chunk_size}")
        self.folder = Path(folder)
        self._chunk_size = chunk_size

    def take(self, path: Path, *, max_bytes: int, inbox: Path | None = None) -> Snapshot:
        """Copy `path` into the spool, hashing what is copied.

        Raises:
            InputError: a link or special file, too large, or unreadable (reject it).
            FileStillChangingError: it changed while copied (take it later).
            TransientError: the spool cannot be written now (disk full, I/O error).
        """
        path = Path(path)
        try:
            before = os.lstat(path)
        except OSError as exc:
            raise unreadable_error(path, exc) from exc
        check_regular(path, before, inbox)
        _check_size(path, before.st_size, max_bytes)
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # replaced by a link since the lstat
                raise NotRegularFileError(
                    "this became a symbolic link while the node looked at it; the node never "
                    "follows links: copy the image file itself into the inbox",
                    path=path,
                ) from exc
            raise unreadable_error(path, exc) from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (
                before.st_dev,
                before.st_ino,
            ):
                raise NotRegularFileError(
                    "the file was replaced by something else while the node opened it; drop "
                    "the image file again",
                    path=path,
                )
            os.set_blocking(fd, True)
            for _ in range(_COPY_TRIES):
                snapshot = self._copy(fd, path, max_bytes)
                if snapshot is not None:
                    return snapshot
        finally:
            os.close(fd)
        raise FileStillChangingError(
            "the file kept changing while it was copied (a writer is still at work); it "
            "is taken once it is stable",
            condition="a file still being written",
        )

    def path_for(self, sha256: str) -> Path:
        return self.folder / sha256

    def remove(self, spool_path: Path) -> None:
        """Delete a copy no job needs any more (gone already is fine)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(spool_path)

    # -- internals ---------------------------------------------------------------------

    def _copy(self, fd: int, path: Path, max_bytes: int) -> Snapshot | None:
        """One copy; None when the source changed meanwhile (the copy is discarded)."""
        start = os.fstat(fd)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f".{secrets.token_hex(8)}.tmp"
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise _spool_fault(self.folder, exc) from exc
        digest = hashlib.sha256()
        size = 0
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            while True:
                try:
                    chunk = os.read(fd, self._chunk_size)
                except OSError as exc:
                    raise unreadable_error(path, exc) from exc
                if not chunk:
                    break
                size += len(chunk)
                _check_size(path, size, max_bytes)  # it grew past the limit while read
                digest.update(chunk)
                try:
                    _write_all(out, chunk)
                except OSError as exc:
                    raise _spool_fault(self.folder, exc) from exc
            end = os.fstat(fd)
            changed = (start.st_size, start.st_mtime_ns) != (end.st_size, end.st_mtime_ns)
            if not changed and size == end.st_size:
                try:
                    os.fsync(out)
                except OSError as exc:
                    raise _spool_fault(self.folder, exc) from exc
        except BaseException:
            os.close(out)
            _unlink_quietly(tmp)
            raise
        os.close(out)
        if changed or size != end.st_size:
            _unlink_quietly(tmp)
            return None
        sha = digest.hexdigest()
        final = self.path_for(sha)
        try:
            os.replace(tmp, final)
            sync_folder(self.folder)
        except OSError as exc:
            _unlink_quietly(tmp)
            raise _spool_fault(self.folder, exc) from exc
        return Snapshot(sha, size, end.st_mtime_ns, final)


def _check_size(path: Path, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ImageTooLargeError(
            f"the file is {size:,} bytes, more than the {max_bytes:,} bytes an input may have "
            "(ingest.max_input_bytes); it was not read. Export the image at a lower "
            "resolution or with fewer frames, or raise the limit",
            path=path,
        )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _spool_fault(folder: Path, exc: OSError) -> InputError | TransientError:
    detail = exc.strerror or str(exc)
    if exc.errno in PASSING_ERRNOS or exc.errno is None:
        what = "disk space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "its disk"
        return TransientError(
            f"cannot write the node's copy into {folder} ({detail}); the file is taken once "
            f"{what} is available again",
            condition=f"{what} in {folder}",
            retry_after_s=5.0,
        )
    return TransientError(
        f"cannot write the node's copy into {folder} ({detail}); check that the node's work "
        "folder is writable by the node's user",
        condition=f"a writable {folder}",
        retry_after_s=30.0,
    )
