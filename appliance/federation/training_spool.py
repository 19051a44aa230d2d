"""The node's copies of analysed inputs kept for training: ``work/federation/cases/<sha256>``.

A job's spool copy (`appliance.ingest.snapshot.Spool`, the bytes analysed) is released
when the job is done, long before a clinician reviews it; the inbox file may be gone by
the time the federation first loads its training set (`local_data`), and a reviewed case
would be lost to training. So, with ``federation.enabled``, the pipeline hands each done
job's spool copy to `keep_for_review` first: a hard link (no second copy of the bytes;
a copy where the file system cannot link) named by its sha256 in the cases folder, which
`local_data` reads, verified by sha256 like every source.

Retention (`prune`, run by `local_data` at every load and by `keep_for_review` when the
folder is over its bound):

* a copy whose case is in the training set (its current review is confirmed or
  corrected) is kept as long as it stays there;
* a copy of a case not (or no longer) in the training set is kept `REVIEW_WINDOW_S`
  (30 days) from when it was analysed (its modification time, the intake copy's), the
  time a clinician has to review it, then removed;
* the folder is bounded to `MAX_BYTES` (4 GiB): over it, copies not in the training set
  go first, oldest first, then, with a warning, the oldest training copies (their cases
  stay trainable only while the inbox file still holds the same bytes).

The cases folder holds patient images like the spool and results do (same folder, same
permissions): without ``federation.enabled`` nothing is kept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("fame_node.federation.cases")

CASES_FOLDER = Path("federation") / "cases"  # under paths.work
REVIEW_WINDOW_S = 30 * 86400.0
MAX_BYTES = 4 << 30


@dataclass(frozen=True)
class PruneReport:
    """What `prune` removed, by why, and what it kept."""

    expired: int = 0  # not in the training set, older than the review window
    over_bound: int = 0  # removed to bring the folder under its size bound
    training_lost: int = 0  # of those, copies of cases in the training set
    kept: int = 0
    kept_bytes: int = 0


def keep_for_review(
    copy: Path,
    sha256: str,
    folder: Path,
    training_set: Callable[[], Iterable[str]],
    *,
    max_bytes: int = MAX_BYTES,
) -> Path | None:
    """Keep the spool `copy` of a done job (its bytes hash to `sha256`) in `folder`.

    `training_set` gives the sha256 of every case now in the training set; it is asked
    only when the folder is over `max_bytes`. Returns the kept file, or None when it
    could not be kept (logged; the job's results stand, its case then needs the inbox
    file to be trained on).
    """
    if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
        raise ValueError(f"{sha256!r} is not a lower-case hex sha256")
    target = folder / sha256
    try:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            os.link(copy, target, follow_symlinks=False)
        except FileExistsError:
            pass  # the same content, kept already
        except OSError:
            tmp = folder / f".{sha256}.tmp"
            shutil.copyfile(copy, tmp, follow_symlinks=False)
            os.replace(tmp, target)
    except OSError as exc:
        log.warning("the analysed copy could not be kept for training: %s", exc.strerror)
        return None
    if folder_bytes(folder) > max_bytes:
        prune(folder, set(training_set()), max_bytes=max_bytes)
    return target


def folder_bytes(folder: Path) -> int:
    total = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            if entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    total += entry.stat(follow_symlinks=False).st_size
    return total


def prune(
    folder: Path,
    wanted: set[str],
    *,
    now: float | None = None,
    window_s: float = REVIEW_WINDOW_S,
    max_bytes: int = MAX_BYTES,
) -> PruneReport:
    """Apply the retention of the module docstring; `wanted`: the training set's sha256."""
    now = time.time() if now is None else now
    entries: list[tuple[float, int, str, str]] = []  # mtime, size, name, path
    expired = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            if not entry.is_file(follow_symlinks=False):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if entry.name not in wanted and now - st.st_mtime > window_s:
                expired += _unlink(entry.path)
                continue
            entries.append((st.st_mtime, st.st_size, entry.name, entry.path))
    total = sum(e[1] for e in entries)
    over = lost = 0
    # Over the bound: cases outside the training set first, oldest first, then the rest.
    for _mtime, size, name, path in sorted(entries, key=lambda e: (e[2] in wanted, e[0])):
        if total <= max_bytes:
            break
        if _unlink(path):
            total -= size
            over += 1
            lost += name in wanted
    if lost:
        log.warning(
            "the kept training copies are over their bound (%d bytes): %d copy(ies) of "
            "reviewed cases removed, oldest first; those cases are trained on only while "
            "the inbox file still holds their bytes",
            max_bytes,
            lost,
        )
    return PruneReport(expired, over, lost, len(entries) - over, total)


def _unlink(path: str) -> int:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        log.warning("cannot remove a kept training copy: %s", exc.strerror)
        return 0
    return 1


__all__ = [
    "CASES_FOLDER",
    "MAX_BYTES",
    "REVIEW_WINDOW_S",
    "PruneReport",
    "folder_bytes",
    "keep_for_review",
    "prune",
]
