"""Per-epoch checkpoints of a training stage, so an interrupted run resumes where it stopped.

`StageState` is everything a stage needs to continue as if never stopped: the model,
optimiser, scheduler and random generator states, the best epoch so far and its weights, the
log records and the seconds already spent. It is written with `torch.save` to a temporary file
and renamed after every epoch (a kill never leaves half a checkpoint) and read back with
``weights_only=True`` (tensors and plain containers only, nothing unpickled as code).
Checkpoints are the run's own work files: they stay under ``--work-dir``, never in a bundle.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch


class StageCheckpoint:
    """The checkpoint file of one stage (``<work_dir>/<stage>.resume.pt``)."""

    def __init__(self, work_dir: Path, stage: str) -> None:
        self.path = work_dir / f"{stage}.resume.pt"

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none."""
        if not self.path.is_file():
            return None
        state: dict[str, Any] = torch.load(self.path, map_location="cpu", weights_only=True)
        return state

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def last_epoch(
    saved: dict[str, Any] | None,
    total: int,
    early: bool,
    deadline: float,
    records: list[dict[str, Any]],
) -> int:
    """The last epoch a stage runs to: ``total``, unless it resumed a stage that had ended.

    A stage that ended by early stopping (``early``), or after its last epoch, has nothing
    left. One that ended on its ``--max-minutes`` budget goes on where the budget it was
    resumed with (``deadline``, on `time.monotonic`) has room for another epoch as long as its
    last one (the last of its log ``records``): the same budget trains no further than the run
    that saved it, a larger one finishes the schedule as one uninterrupted run would have.
    """
    if saved is None or not saved.get("done"):
        return total
    run = int(saved["epoch"])
    room_s = deadline - time.monotonic()
    if early or run >= total or not records or records[-1]["seconds"] > room_s:
        return run
    print(
        f"[resume] the stage had stopped on its time budget after epoch {run}; "
        f"{room_s / 60:.0f} min are left now: going on to epoch {total}",
        flush=True,
    )
    return total
