"""`fame-node process PATH...`: process given files now, through the same queue and store.

Each path becomes a job exactly as if it had been dropped into the inbox (so the results
appear in the worklist and a second run on the same content is recognised), but it is
processed at once in this process. Returns one `Outcome` per input, in order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.service import NodeParts
from appliance.store.jobs import Job, JobQueue
from appliance.store.results import ResultStore

TERMINAL = {"done", "rejected", "failed", "duplicate"}


@dataclass(frozen=True)
class Outcome:
    path: str
    status: str  # done / rejected / failed
    reason: str | None
    job_id: int | None
    job_status: str | None = None  # the job's own state: also "duplicate", "queued", ...
    duplicate_of: int | None = None
    model: str | None = None
    result_dir: str | None = None
    frames: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "status": self.status,
            "reason": self.reason,
            "job_id": self.job_id,
            "job_status": self.job_status,
            "duplicate_of": self.duplicate_of,
            "model": self.model,
            "result_dir": self.result_dir,
            "frames": self.frames,
        }


def expand(paths: Iterable[Path]) -> list[Path]:
    """Files as given; folders replaced by the files below them (sorted)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.is_file()))
        else:
            out.append(p)
    return out


def process_paths(parts: NodeParts, paths: Iterable[Path]) -> list[Outcome]:
    outcomes = []
    for path in expand(paths):
        job = parts.intake.submit(path.absolute())
        if job.status == "queued":
            claimed = parts.queue.claim(job.id)
            if claimed is not None:
                parts.pipeline.process(claimed)
        outcomes.append(describe(parts.queue, parts.results, parts.queue.get(job.id), str(path)))
    return outcomes


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
