"""Copies of rejected inputs for IT staff to look at, within a size limit.

A rejected input is copied from the node's spool (the bytes that were analysed, never
the inbox file again, which may since be anything) into ``quarantine/`` as
``job-NNNNNN<suffix>``, unless it is larger than `max_file_bytes` or the folder would grow
beyond `max_total_bytes`: then it is not copied and the caller records why. Links and
special files are refused at intake and never reach here. The suffix comes from a name
that a sender chose, so only a short run of letters and digits of it is kept.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}")


def safe_suffix(name: str) -> str:
    """The extension of `name` if it is a plain one (``.dcm``), else ``''``."""
    suffix = os.path.splitext(name)[1]
    return suffix.lower() if _SUFFIX.fullmatch(suffix) else ""


@dataclass(frozen=True)
class Kept:
    path: Path | None  # the copy, or None when not copied
    note: str | None = None  # why not, for the log


class Quarantine:
    def __init__(self, folder: Path, *, max_file_bytes: int, max_total_bytes: int) -> None:
        self.folder = Path(folder)
        self.max_file_bytes = max_file_bytes
        self.max_total_bytes = max_total_bytes

    def keep(self, job_id: int, source: Path, name: str) -> Kept:
        """Copy `source` for job `job_id` (original file name `name`) within the limits."""
        size = source.stat().st_size
        if size > self.max_file_bytes:
            return Kept(
                None,
                f"not copied to quarantine: {size:,} bytes is over the "
                f"{self.max_file_bytes:,}-byte limit per file",
            )
        used = self._used()
        if used + size > self.max_total_bytes:
            return Kept(
                None,
                f"not copied to quarantine: it holds {used:,} bytes and its "
                f"limit is {self.max_total_bytes:,}; clear it out",
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        dest = self.folder / f"job-{job_id:06d}{safe_suffix(name)}"
        tmp = dest.with_name(f".{dest.name}.tmp")
        try:
            shutil.copyfile(source, tmp)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return Kept(dest)

    def _used(self) -> int:
        total = 0
        try:
            with os.scandir(self.folder) as entries:
                for entry in entries:
                    if entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            return 0
        return total
