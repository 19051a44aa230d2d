"""Durable file writes: a file is complete on disk, under its final name, or not there at all.

A job is marked ``done`` in a database commit made with ``synchronous=FULL``, so its
result files must be on disk before that commit, or a power cut right after it leaves a
``done`` job with empty or missing files. Each file is written to a temporary name in the
same folder, flushed and fsync'd, renamed over its final name, and the folder fsync'd, so
the rename itself is on disk (POSIX leaves a rename in the page cache until the folder is
synced). A folder created for the job is made durable the same way, by syncing its parent.

`write_atomic(..., sync_dir=False)` leaves the folder sync to one `sync_folder` call
after the last file of a job (one folder fsync per job instead of one per file); the
file's own content is always fsync'd before its rename, so a rename that survives a crash
never names an empty file.

A failed write removes its temporary file and leaves the final name as it was.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def sync_folder(folder: Path) -> None:
    """fsync `folder` itself, so the names created or renamed in it survive a power cut.

    Raises:
        OSError: the folder cannot be opened or synced (e.g. it is gone).
    """
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_folder(folder: Path) -> Path:
    """Create `folder` and any missing parents, each made durable in its parent.

    Existing folders are left as they are (nothing is synced for them): a folder that
    already existed was made durable when it was created, by this function or by the
    install. Returns `folder`.
    """
    missing: list[Path] = []
    at = folder
    while not at.is_dir():
        missing.append(at)
        if at.parent == at:
            break
        at = at.parent
    for path in reversed(missing):  # outermost first, so each parent exists
        try:
            path.mkdir()
        except FileExistsError:
            if not path.is_dir():
                raise
            continue  # another worker made it; it syncs the parent itself
        sync_folder(path.parent)
    return folder


def write_atomic(path: Path, write: Callable[[BinaryIO], object], *, sync_dir: bool = True) -> None:
    """Write `path` via `write(file)` so that it is whole on disk or not changed at all.

    `write` receives a binary file open for writing; it is flushed and fsync'd, then
    renamed over `path`. With `sync_dir` (the default) the folder is synced too; pass
    False only when `sync_folder(path.parent)` is called after the last file of the batch
    and before anything (a database commit) says the files exist.

    Raises whatever `write`, the file system or the rename raises, after removing the
    temporary file.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Also on KeyboardInterrupt: a half-written temporary file is never useful. A
        # failure to remove it must not hide the error that stopped the write.
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        sync_folder(path.parent)
