"""Opening an input file: only regular files, within the size limit, OS errors in words.

`open_input` is the one place a reader opens a file. It opens without blocking (a FIFO
put in place of a file would otherwise hold the reader in `open()` for ever), then
checks, on the open descriptor (no race with a rename), that it is a regular file, not
empty, and not larger than `max_bytes`. Every refusal is an `InputError` whose reason
says what was found and what to do; none quotes the file's name or content (reasons are
shown in the worklist and logged, and the job already records which file it was).
"""

from __future__ import annotations

import errno
import getpass
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from appliance.errors import (
    EmptyFileError,
    ImageTooLargeError,
    NotRegularFileError,
    UnreadableFileError,
)
from appliance.io.bounds import size_refusal


def describe_kind(mode: int) -> str:
    """'a symbolic link', 'a FIFO (named pipe)', ... for a `stat` mode that is not a
    regular file (the words a reason uses; shared by the intake and the bundle checks)."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "a special file"


def _node_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in the environment or the password database
        return f"uid {os.getuid()}"


def unreadable_error(path: Path, exc: OSError) -> UnreadableFileError:
    """The `UnreadableFileError` for an OS error raised while opening or reading `path`."""
    if isinstance(exc, FileNotFoundError):
        reason = (
            "the file no longer exists (it was moved or deleted before FAME Node could "
            "read it); if it was still being copied, drop it again once the copy is complete"
        )
    elif isinstance(exc, PermissionError):
        reason = (
            f"permission denied: FAME Node runs as user '{_node_user()}', which may "
            "not read this file; grant that user read access (for example chmod o+r, or add it "
            "to the file's group) and drop the file again"
        )
    elif isinstance(exc, IsADirectoryError):
        reason = "this is a folder, not a file; drop the image files themselves"
    else:
        # strerror only: str(exc) carries the path, which may hold a patient's name
        detail = exc.strerror or type(exc).__name__
        reason = (
            f"the file could not be read ({detail}); check the disk or network share "
            "and drop the file again"
        )
    return UnreadableFileError(reason, path=path)


def _special_file_error(path: Path, kind: str) -> NotRegularFileError:
    return NotRegularFileError(
        f"this is {kind}, not a regular file; FAME Node reads regular files only: copy the "
        "image file itself into the inbox",
        path=path,
    )


@contextmanager
def open_input(path: Path, *, max_bytes: int | None = None) -> Iterator[IO[bytes]]:
    """Open `path` for binary reading; refusals and OS errors become `InputError`s.

    Raises `NotRegularFileError` for a FIFO, device or socket, `UnreadableFileError` for a
    folder or an OS error, `EmptyFileError` for 0 bytes and `ImageTooLargeError` for more
    than `max_bytes` (nothing is read). Only errors raised while opening and measuring
    are translated; errors raised by the caller's own code inside the block pass through.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket (or a FIFO without a writer on some systems)
            raise _special_file_error(path, "a socket or FIFO") from exc
        raise unreadable_error(path, exc) from exc
    try:
        info = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        raise unreadable_error(path, exc) from exc
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        if stat.S_ISDIR(info.st_mode):
            raise unreadable_error(path, IsADirectoryError(errno.EISDIR, "Is a directory"))
        raise _special_file_error(path, describe_kind(info.st_mode))
    if info.st_size == 0:
        os.close(fd)
        raise EmptyFileError(
            "the file is empty (0 bytes); the export probably failed: export it again",
            path=path,
        )
    too_big = None if max_bytes is None else size_refusal(info.st_size, max_bytes)
    if too_big is not None:
        os.close(fd)
        raise ImageTooLargeError(too_big, path=path)
    os.set_blocking(fd, True)  # a regular file: reads never block for long anyway
    # Unbuffered FileIO, named "<input>": pydicom keeps reading deferred values from this
    # open file (given a BufferedReader it reopens the file by its name, which could by
    # then hold other bytes), and the name it puts in its messages is not the path.
    with os.fdopen(fd, "rb", buffering=0) as fh:
        fh.name = "<input>"
        yield fh


def read_head(fh: IO[bytes], path: Path, n: int = 132) -> bytes:
    """The first `n` bytes of an open file (fewer if it is shorter); rewinds to the start."""
    try:
        head = fh.read(n)
        fh.seek(0)
    except OSError as exc:
        raise unreadable_error(path, exc) from exc
    return head


def read_all(fh: IO[bytes], path: Path) -> bytes:
    """The whole of an open file (its size was bounded by `open_input`); rewinds first."""
    try:
        fh.seek(0)
        return fh.read()
    except OSError as exc:
        raise unreadable_error(path, exc) from exc
