"""`fame-node process PATH...`: process given files now, through the same queue and store.

Each path becomes a job exactly as if it had been dropped into the inbox (so the results
appear in the worklist and a second run on the same content is recognised), but it is
processed at once in this process. Returns one `Outcome` per input, in order.

Every input gets an answer: each path given, and each entry found below a given folder
that is not itself a folder (a FIFO, socket, device, symlink of any kind, dangling or
looping, as well as regular files), goes to the node's intake, which rejects what it may
not read with its reason. Walking a folder never opens an entry (opening a FIFO blocks)
and never follows a symlinked folder (no loops, nothing outside the folder given). A
folder that holds nothing, or a passing fault that keeps a file from being taken now
(`TransientError`), is answered here, without a job.

`Outcome.to_dict` is what people and programs see: names shown safely
(`appliance.privacy.shown_name`: control characters and bytes that are not UTF-8 escaped).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import TransientError
from appliance.privacy import shown, shown_name
from appliance.service import NodeParts
from appliance.store.jobs import Job, JobQueue
from appliance.store.results import ResultStore

TERMINAL = {"done", "rejected", "failed", "duplicate"}


@dataclass(frozen=True)
class Outcome:
    path: str  # as given or found (os.fsdecode form); shown safely by `to_dict`
    status: str  # done / rejected / failed
    reason: str | None
    job_id: int | None
    job_status: str | None = None  # the job's own state: also "duplicate", "queued", ...
    duplicate_of: int | None = None
    model: str | None = None
    result_dir: str | None = None
    frames: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The outcome as shown: no raw control characters in any name or reason."""
        return {
            "path": shown_name(self.path),
            "status": self.status,
            "reason": None if self.reason is None else shown(self.reason),
            "job_id": self.job_id,
            "job_status": self.job_status,
            "duplicate_of": self.duplicate_of,
            "model": self.model,
            "result_dir": None if self.result_dir is None else shown_name(self.result_dir),
            "frames": self.frames,
        }


def _walk(folder: Path) -> list[Path]:
    """Every entry below `folder` that is not a folder, symlinked folders not entered.

    `os.scandir` reads names and types from the folder itself: no entry is opened or
    followed. A subfolder that cannot be listed is returned itself, for the intake to
    answer (permission denied, I/O error)."""
    found: list[Path] = []
    pending = [folder]
    while pending:
        at = pending.pop()
        try:
            with os.scandir(at) as it:
                entries = list(it)
        except OSError:
            found.append(at)
            continue
        for entry in entries:
            try:
                is_folder = entry.is_dir(follow_symlinks=False)
            except OSError:  # vanished since listed: the intake says so
                is_folder = False
            (pending if is_folder else found).append(Path(entry.path))
    return found


def expand(paths: Iterable[Path]) -> list[list[Path]]:
    """For each path given, the paths to submit: a file (or anything not a folder) as
    itself, a folder (a symlink to one given here is entered) as every entry below it
    that is not a folder, sorted (`_walk`); an empty list for a folder with nothing in it.
    `os.path.isdir` only stats the path, so a FIFO given here is not opened."""
    return [sorted(_walk(p)) if os.path.isdir(p) else [p] for p in paths]


def process_paths(parts: NodeParts, paths: Iterable[Path]) -> list[Outcome]:
    given_paths = list(paths)
    outcomes = []
    for given, found in zip(given_paths, expand(given_paths), strict=True):
        if not found:
            outcomes.append(_answer_without_job(given, "rejected", "the folder holds no files."))
        for path in found:
            outcomes.append(_process_one(parts, path))
    return outcomes


def _process_one(parts: NodeParts, path: Path) -> Outcome:
    try:
        job = parts.intake.submit(path.absolute(), inside_inbox=False)
    except TransientError as exc:
        return _answer_without_job(path, "failed", f"not taken now: {exc}; run the command again.")
    if job.status == "queued":
        claimed = parts.queue.claim(job.id)
        if claimed is not None:
            parts.pipeline.process(claimed)
    return describe(parts.queue, parts.results, parts.queue.get(job.id), str(path))


def _answer_without_job(path: Path, status: str, reason: str) -> Outcome:
    """An answer for an input that has no job."""
    return Outcome(path=str(path), status=status, reason=reason, job_id=None)


def describe(queue: JobQueue, results: ResultStore, job: Job, path: str) -> Outcome:
    """The outcome of `job`; a duplicate reports the results of the job it repeats."""
    source = job
    if job.status == "duplicate" and job.duplicate_of is not None:
        source = queue.get(job.duplicate_of)
    status = source.status if source.status in TERMINAL - {"duplicate"} else "failed"
    reason = job.reason if job.status != "done" else None
    if source.status in ("queued", "running"):
        reason = f"job {source.id} is still {source.status} in the node's queue"
    frames = []
    result_dir = None
    if source.status == "done":
        for r in results.results_for_job(source.id):
            result_dir = r.result_dir
            frames.append(
                {
                    "frame_index": r.frame_index,
                    "diagnosis": r.diagnosis,
                    "confidence": r.confidence,
                    "probabilities": r.probabilities,
                    "lesion_area_px": r.lesion_area_px,
                    "lesion_area_mm2": r.lesion_area_mm2,
                    "max_diameter_px": r.max_diameter_px,
                    "max_diameter_mm": r.max_diameter_mm,
                    "n_lesions": r.n_lesions,
                    "flags": list(r.flags),
                }
            )
    return Outcome(
        path=path,
        status=status,
        reason=reason,
        job_id=job.id,
        job_status=str(job.status),
        duplicate_of=job.duplicate_of,
        model=source.model_version,
        result_dir=result_dir,
        frames=frames,
    )
