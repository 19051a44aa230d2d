"""Reading a bundle folder without following links: one directory descriptor, no symlinks.

A bundle is verified by the bytes of its files, so every file is read here exactly once:
opened relative to a descriptor of the bundle folder, each path component with
``O_NOFOLLOW`` (a symlinked file *or* folder anywhere in the bundle fails to open), checked
to be a regular file on the open descriptor (a FIFO is opened non-blocking, so it cannot
hang the node, and refused), and read whole. What is hashed is what the caller then uses;
nothing is reopened by path afterwards, so a file swapped after verification is never used.

`list_tree` lists every entry under the folder the same way, so that the bundle's verifier
can refuse symlinks, special files and files its manifest does not list.

Errors are `UnsafeMemberError` (a `BundleError`), naming the member and what it is.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from appliance.errors import BundleError
from appliance.io.files import describe_kind

_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NOFOLLOW_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
MAX_DEPTH = 16  # bundles hold a few files, engines/ one level down


class UnsafeMemberError(BundleError):
    """A bundle member is a symlink, not a regular file, or cannot be opened safely."""

    def __init__(self, message: str, *, member: str) -> None:
        self.member = member
        super().__init__(message)


@contextmanager
def open_folder(path: Path) -> Iterator[int]:
    """A descriptor of the bundle folder itself (the path given may pass through links
    that whoever configured it chose; nothing inside it may)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise BundleError(f"bundle folder {path} cannot be opened: {exc.strerror}") from exc
    try:
        yield fd
    finally:
        os.close(fd)


def _refusal(where: str, rel: str, what: str) -> UnsafeMemberError:
    return UnsafeMemberError(
        f"{where}: {rel!r} is {what}; a bundle holds only regular files (no symbolic links, "
        "FIFOs or devices). The bundle is refused: get a clean copy of it.",
        member=rel,
    )


def _open_nofollow(root_fd: int, rel: str, where: str) -> int:
    """An fd of the regular file `rel` under `root_fd`, no component followed if a link."""
    parts = PurePosixPath(rel).parts
    dir_fd = root_fd
    opened: list[int] = []
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            try:
                fd = os.open(part, _NOFOLLOW_FILE if last else _NOFOLLOW_DIR, dir_fd=dir_fd)
            except OSError as exc:
                try:
                    mode = os.stat(part, dir_fd=dir_fd, follow_symlinks=False).st_mode
                except OSError:
                    mode = None
                if mode is not None and stat.S_ISLNK(mode):
                    done = "/".join(parts[: i + 1])
                    raise _refusal(where, done, "a symbolic link") from None
                if isinstance(exc, FileNotFoundError):
                    raise
                raise BundleError(f"{where}: {rel} cannot be opened: {exc.strerror}") from exc
            opened.append(fd)
            dir_fd = fd
        fd = opened.pop()
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise _refusal(where, rel, describe_kind(mode))
        return fd
    finally:
        for fd in opened:
            os.close(fd)


def read_member(root_fd: int, rel: str, where: str) -> bytes:
    """The whole content of the regular file `rel` in the bundle, read once.

    Raises
    ------
    FileNotFoundError
        `rel` does not exist.
    UnsafeMemberError
        `rel` or a folder on its way is a symlink, or it is not a regular file.
    BundleError
        it cannot be read.
    """
    fd = _open_nofollow(root_fd, rel, where)
    try:
        chunks: list[bytes] = []
        while True:
            chunk = os.read(fd, 1 << 22)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise BundleError(f"{where}: {rel} cannot be read: {exc.strerror}") from exc
    finally:
        os.close(fd)


def read_optional(root_fd: int, rel: str, where: str) -> bytes | None:
    """`read_member`, or None where `rel` does not exist."""
    try:
        return read_member(root_fd, rel, where)
    except FileNotFoundError:
        return None


def list_tree(root_fd: int, where: str) -> list[str]:
    """Every regular file under the folder, as bundle-relative POSIX paths.

    Raises
    ------
    UnsafeMemberError
        an entry is a symlink, FIFO, socket or device, or folders nest too deep.
    """
    found: list[str] = []

    def walk(dir_fd: int, prefix: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise _refusal(where, prefix.rstrip("/"), f"nested more than {MAX_DEPTH} deep")
        for name in sorted(os.listdir(dir_fd)):
            rel = prefix + name
            mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
            if stat.S_ISREG(mode):
                found.append(rel)
            elif stat.S_ISDIR(mode):
                sub = os.open(name, _NOFOLLOW_DIR, dir_fd=dir_fd)
                try:
                    walk(sub, rel + "/", depth + 1)
                finally:
                    os.close(sub)
            else:
                raise _refusal(where, rel, describe_kind(mode))

    try:
        walk(root_fd, "", 0)
    except UnsafeMemberError:
        raise
    except OSError as exc:
        raise BundleError(f"{where}: the bundle folder cannot be listed: {exc}") from exc
    return found
