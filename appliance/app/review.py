"""The review service: a clinician's decisions on the case on screen, and undo.

A thin layer over `ReviewStore` that knows who is reviewing, can apply one decision to
several frames of a clip at once, and keeps this session's actions so that "undo" takes
back the last one (all its frames). Events: `reviewed` after every decision or undo, with
the job id, so the worklist and viewer can read the store again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from appliance.app.display import diagnosis_label
from appliance.app.events import Event
from appliance.errors import FameNodeError
from appliance.store.reviews import Review, ReviewStore, TrainingExample


class UndoError(FameNodeError):
    """The last action cannot be undone (another decision was made on its frames since)."""


@dataclass(frozen=True)
class Action:
    """One decision of this session, on one or more frames of a job."""

    job_id: int
    reviews: tuple[Review, ...]
    label: str  # e.g. "Corrected diagnosis to Malignant (job 12, 3 frames)"


class ReviewService:
    """Records decisions as `reviewer` (a user name, shown in the audit trail)."""

    def __init__(self, store: ReviewStore, reviewer: str) -> None:
        if not reviewer.strip():
            raise ValueError("the review service needs the reviewer's name; got ''")
        self._store = store
        self.reviewer = reviewer.strip()
        self._done: list[Action] = []
        self.reviewed: Event[int] = Event()

    # -- decisions ------------------------------------------------------------------------
    def confirm(self, job_id: int, frames: Sequence[int]) -> Action:
        return self._each(
            job_id,
            frames,
            lambda f: self._store.confirm(job_id, f, self.reviewer),
            "Confirmed",
        )

    def correct_diagnosis(self, job_id: int, frames: Sequence[int], diagnosis: str) -> Action:
        return self._each(
            job_id,
            frames,
            lambda f: self._store.correct_diagnosis(job_id, f, diagnosis, self.reviewer),
            f"Diagnosis set to {diagnosis_label(diagnosis)}",
        )

    def reject_mask(self, job_id: int, frames: Sequence[int]) -> Action:
        return self._each(
            job_id,
            frames,
            lambda f: self._store.reject_mask(job_id, f, self.reviewer),
            "Mask rejected",
        )

    def save_mask(self, job_id: int, frame: int, mask: NDArray[np.generic]) -> Action:
        return self._each(
            job_id,
            [frame],
            lambda f: self._store.correct_mask(job_id, f, mask, self.reviewer),
            "Mask corrected",
        )

    # -- undo -----------------------------------------------------------------------------
    @property
    def last_action(self) -> Action | None:
        return self._done[-1] if self._done else None

    def undo(self) -> Action | None:
        """Take back this session's last action on all its frames; None if there is none.

        Raises:
            UndoError: a frame of it has been decided again since (by anyone): undo that
                decision first, or decide again.
        """
        if not self._done:
            return None
        action = self._done[-1]
        for review in action.reviews:
            current = self._store.current(review.job_id, review.frame_index)
            if current is None or current.id != review.id:
                raise UndoError(
                    f"cannot undo '{action.label}': frame {review.frame_index} of job "
                    f"{review.job_id} was decided again since"
                    + (f" by {current.reviewer}" if current is not None else "")
                )
        for review in reversed(action.reviews):
            self._store.undo(review.id)
        self._done.pop()
        self.reviewed.emit(action.job_id)
        return action

    # -- reading --------------------------------------------------------------------------
    def history(self, job_id: int, frame_index: int | None = None) -> list[Review]:
        return self._store.history(job_id, frame_index)

    def training_set(self) -> list[TrainingExample]:
        """The local training set (see `ReviewStore.training_set`)."""
        return self._store.training_set()

    # -- internals ------------------------------------------------------------------------
    def _each(
        self, job_id: int, frames: Sequence[int], decide: Callable[[int], Review], what: str
    ) -> Action:
        if not frames:
            raise ValueError(f"no frames of job {job_id} were given to review")
        where = f"job {job_id}" + (f", {len(frames)} frames" if len(frames) > 1 else "")
        reviews: list[Review] = []
        try:
            for f in frames:
                reviews.append(decide(f))
        finally:
            # Frames decided before an error stay decided, and undoable.
            action = Action(job_id, tuple(reviews), f"{what} — {where}")
            if reviews:
                self._done.append(action)
                self.reviewed.emit(job_id)
        return action
