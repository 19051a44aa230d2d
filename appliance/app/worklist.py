"""The worklist: every image the node was given, with its findings and review state.

One `WorklistEntry` per job (per received file): done jobs carry a summary of their
analysed frames; rejected, failed and duplicate ones their reason, so that nothing goes
missing silently; queued and running ones show as processing. `WorklistModel` keeps the
entries, filters, searches and sorts them (pure functions below), and reloads them when
the store changes: `poll()` compares a cheap change token and reloads only when it moved.
The GUI calls `poll()` on a timer; the service may be another process writing the store.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from appliance.app.display import ReviewState, person_name, withheld
from appliance.app.events import Event


@dataclass(frozen=True)
class FrameSummary:
    """One analysed frame as the worklist needs it: the model's findings and the review."""

    frame_index: int
    diagnosis: str | None
    confidence: float | None
    probabilities: dict[str, float]
    flags: tuple[str, ...]
    decision: str | None = None  # the current review's decision, None when unreviewed
    reviewed_diagnosis: str | None = None


@dataclass(frozen=True)
class WorklistEntry:
    """One received file. Identifiers are kept out of `repr` so that logging never shows them."""

    job_id: int
    path: Path
    status: str  # the job's status: done, rejected, failed, duplicate, queued, running
    received: datetime
    reason: str | None = None
    duplicate_of: int | None = None
    patient_name: str | None = field(default=None, repr=False)
    patient_id: str | None = field(default=None, repr=False)
    study_date: date | None = field(default=None, repr=False)
    modality: str | None = None
    source_format: str | None = None
    n_frames_total: int | None = None
    frames: tuple[FrameSummary, ...] = ()
    model_version: str | None = None
    backend: str | None = None

    @property
    def file_name(self) -> str:
        return self.path.name

    @property
    def patient_display(self) -> str:
        return person_name(self.patient_name)

    @cached_property
    def summary(self) -> tuple[str | None, float | None, dict[str, float], tuple[str, ...]]:
        """(diagnosis, confidence, probabilities, flags) of the image: `summarise_frames`."""
        return summarise_frames(self.frames)

    @property
    def diagnosis(self) -> str | None:
        return self.summary[0]

    @property
    def confidence(self) -> float | None:
        return self.summary[1]

    @property
    def flags(self) -> tuple[str, ...]:
        return self.summary[3]

    @property
    def flagged(self) -> bool:
        return bool(self.flags)

    @cached_property
    def review_state(self) -> ReviewState:
        return review_state(self.status, self.frames)

    @property
    def reviewed_diagnosis(self) -> str | None:
        """The clinician's diagnosis where it differs from the model's, else None."""
        given = {f.reviewed_diagnosis for f in self.frames if f.reviewed_diagnosis is not None}
        model = {f.diagnosis for f in self.frames}
        if len(given) == 1 and given != model:
            return given.pop()
        return None


def summarise_frames(
    frames: Sequence[FrameSummary],
) -> tuple[str | None, float | None, dict[str, float], tuple[str, ...]]:
    """(diagnosis, confidence, probabilities, flags) of an image from its frames.

    One frame: its own. Several (a cine clip): the class with the highest mean probability,
    that mean as the confidence, the union of the frames' flags, and ``frames_disagree``
    when the frames' own diagnoses differ.
    """
    if not frames:
        return None, None, {}, ()
    if len(frames) == 1:
        f = frames[0]
        return f.diagnosis, f.confidence, dict(f.probabilities), tuple(f.flags)
    classes = list(dict.fromkeys(c for f in frames for c in f.probabilities))
    mean = {c: sum(f.probabilities.get(c, 0.0) for f in frames) / len(frames) for c in classes}
    diagnosis = max(mean, key=mean.__getitem__) if mean else None
    flags = list(dict.fromkeys(flag for f in frames for flag in f.flags))
    if len({f.diagnosis for f in frames}) > 1:
        flags.append("frames_disagree")
    return diagnosis, None if diagnosis is None else mean[diagnosis], mean, tuple(flags)


def review_state(status: str, frames: Sequence[FrameSummary]) -> ReviewState:
    """The review state of an image from its job status and its frames' current reviews."""
    if status in ("queued", "running"):
        return ReviewState.PROCESSING
    if status != "done" or not frames:
        return ReviewState.NOT_ANALYSED
    decisions = [f.decision for f in frames]
    if all(d is None for d in decisions):
        return ReviewState.UNREVIEWED
    if any(d is None for d in decisions):
        return ReviewState.PARTIAL
    if "mask_rejected" in decisions:
        return ReviewState.MASK_REJECTED
    if "corrected" in decisions:
        return ReviewState.CORRECTED
    return ReviewState.CONFIRMED


# -- filter, search, sort ---------------------------------------------------------------------


@dataclass(frozen=True)
class WorklistFilter:
    """What the worklist shows. Empty sets mean "any"; dates are inclusive, local dates of
    when the node received the file."""

    text: str = ""
    states: frozenset[ReviewState] = frozenset()
    diagnoses: frozenset[str] = frozenset()
    flagged_only: bool = False
    received_from: date | None = None
    received_to: date | None = None


def matches(entry: WorklistEntry, f: WorklistFilter) -> bool:
    """Whether `entry` passes the filter `f` (pure)."""
    if f.states and entry.review_state not in f.states:
        return False
    if f.diagnoses:
        # As the worklist shows it: an out-of-distribution image has no model diagnosis.
        shown = entry.reviewed_diagnosis or (None if withheld(entry.flags) else entry.diagnosis)
        if shown not in f.diagnoses:
            return False
    if f.flagged_only and not entry.flagged:
        return False
    day = entry.received.astimezone().date()
    if f.received_from is not None and day < f.received_from:
        return False
    if f.received_to is not None and day > f.received_to:
        return False
    return not f.text.strip() or _text_matches(entry, f.text)


def _text_matches(entry: WorklistEntry, text: str) -> bool:
    haystack = " ".join(
        s
        for s in (
            entry.patient_name or "",
            entry.patient_display,
            entry.patient_id or "",
            entry.file_name,
            str(entry.job_id),
            entry.reason or "",
            "" if withheld(entry.flags) else entry.diagnosis or "",
            entry.modality or "",
        )
        if s
    ).casefold()
    return all(word in haystack for word in text.casefold().split())


class Column(StrEnum):
    """The worklist's columns, in display order."""

    PATIENT = "patient"
    PATIENT_ID = "patient_id"
    STUDY_DATE = "study_date"
    RECEIVED = "received"
    FILE = "file"
    DIAGNOSIS = "diagnosis"
    CONFIDENCE = "confidence"
    FLAGS = "flags"
    REVIEW = "review"


COLUMN_TITLES: dict[Column, str] = {
    Column.PATIENT: "Patient",
    Column.PATIENT_ID: "Patient ID",
    Column.STUDY_DATE: "Study date",
    Column.RECEIVED: "Received",
    Column.FILE: "File",
    Column.DIAGNOSIS: "Diagnosis",
    Column.CONFIDENCE: "Confidence",
    Column.FLAGS: "Flags",
    Column.REVIEW: "Review",
}

_SEVERITY = {"malignant": 3, "benign": 2, "normal": 1}
_REVIEW_ORDER = {
    ReviewState.UNREVIEWED: 0,
    ReviewState.PARTIAL: 1,
    ReviewState.MASK_REJECTED: 2,
    ReviewState.CORRECTED: 3,
    ReviewState.CONFIRMED: 4,
    ReviewState.PROCESSING: 5,
    ReviewState.NOT_ANALYSED: 6,
}

_SORT_KEYS: dict[Column, Callable[[WorklistEntry], Any]] = {
    Column.PATIENT: lambda e: e.patient_display.casefold() or None,
    Column.PATIENT_ID: lambda e: e.patient_id or None,
    Column.STUDY_DATE: lambda e: e.study_date,
    Column.RECEIVED: lambda e: e.received,
    Column.FILE: lambda e: e.file_name.casefold(),
    Column.DIAGNOSIS: lambda e: _SEVERITY.get(e.reviewed_diagnosis or e.diagnosis or ""),
    Column.CONFIDENCE: lambda e: e.confidence,
    Column.FLAGS: lambda e: len(e.flags) or None,
    Column.REVIEW: lambda e: _REVIEW_ORDER[e.review_state],
}


def sort_entries(
    entries: Iterable[WorklistEntry], column: Column, descending: bool = False
) -> list[WorklistEntry]:
    """Sorted by `column`; entries without a value go last either way; ties newest first."""
    by_newest = sorted(entries, key=lambda e: e.job_id, reverse=True)
    key = _SORT_KEYS[column]
    present = [e for e in by_newest if key(e) is not None]
    missing = [e for e in by_newest if key(e) is None]
    return sorted(present, key=key, reverse=descending) + missing


# -- the model ----------------------------------------------------------------------------


class WorklistSource(Protocol):
    """Where the entries come from (`appliance.app.worklist_source.StoreWorklistSource`)."""

    def change_token(self) -> Hashable:
        """Changes whenever an entry would (a new job, a status, a review); cheap."""
        ...

    def load(self) -> list[WorklistEntry]: ...


class WorklistModel:
    """The entries, the filter and sort the user chose, and what they leave visible.

    Events: `changed` after the visible entries may have changed (a reload, a new filter
    or sort); views re-read `visible` then.
    """

    def __init__(self, source: WorklistSource) -> None:
        self._source = source
        self._token: Hashable | None = None
        self._entries: list[WorklistEntry] = []
        self._by_id: dict[int, WorklistEntry] = {}
        self._filter = WorklistFilter()
        self._sort: tuple[Column, bool] = (Column.RECEIVED, True)
        self._visible: list[WorklistEntry] = []
        self.changed: Event[WorklistModel] = Event()

    @property
    def entries(self) -> list[WorklistEntry]:
        return list(self._entries)

    @property
    def visible(self) -> list[WorklistEntry]:
        return list(self._visible)

    @property
    def filter(self) -> WorklistFilter:
        return self._filter

    @property
    def sort(self) -> tuple[Column, bool]:
        return self._sort

    def entry(self, job_id: int) -> WorklistEntry | None:
        return self._by_id.get(job_id)

    def poll(self) -> bool:
        """Reload if the store changed since the last load; True when it reloaded."""
        token = self._source.change_token()
        if token == self._token:
            return False
        self._token = token
        self._load()
        return True

    def reload(self) -> None:
        """Reload now, whatever the change token says."""
        self._token = self._source.change_token()
        self._load()

    def set_filter(self, new: WorklistFilter | None = None, **changes: Any) -> None:
        """Replace the filter, or change some of its fields (``set_filter(flagged_only=True)``)."""
        self._filter = replace(new or self._filter, **changes)
        self._apply()

    def set_sort(self, column: Column, descending: bool = False) -> None:
        self._sort = (column, descending)
        self._apply()

    def counts(self) -> dict[ReviewState, int]:
        """How many entries (all, not only visible) are in each review state."""
        out = {state: 0 for state in ReviewState}
        for e in self._entries:
            out[e.review_state] += 1
        return out

    def neighbour(self, job_id: int, step: int) -> WorklistEntry | None:
        """The visible entry `step` rows after (negative: before) `job_id`, if any."""
        ids = [e.job_id for e in self._visible]
        if job_id not in ids:
            return self._visible[0] if self._visible else None
        i = ids.index(job_id) + step
        return self._visible[i] if 0 <= i < len(ids) else None

    def _load(self) -> None:
        self._entries = self._source.load()
        self._by_id = {e.job_id: e for e in self._entries}
        self._apply()

    def _apply(self) -> None:
        column, descending = self._sort
        kept = [e for e in self._entries if matches(e, self._filter)]
        self._visible = sort_entries(kept, column, descending)
        self.changed.emit(self)
