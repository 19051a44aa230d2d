"""The viewer's model: one case's frames, masks and findings, and how they are displayed.

`CaseLoader` reads a done job back: the original input file again (with the node's own
reader, so the frames are exactly those the model saw: same crop, same frame indices),
the model's mask PNGs, the stored results and the current reviews. Where the input file
is gone or changed since it was analysed, the stored overlay PNG is shown instead, with a
note saying so. `ViewerModel` holds the display state (frame, overlay on / off, opacity,
fill / outline, window / level, mask editing) and emits `changed` with what changed.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from appliance.app.display import MODEL_MASK_RGB, REVIEWED_MASK_RGB, RGB
from appliance.app.events import Event
from appliance.app.imaging import FULL_WINDOW, MaskMeasures, auto_window, measure_mask
from appliance.app.mask_editor import MaskEditor
from appliance.errors import FameNodeError, InputError, TransientError
from appliance.ingest.snapshot import Spool
from appliance.io.reader import read_file
from appliance.io.types import ImageMeta
from appliance.store.jobs import Job, JobQueue
from appliance.store.results import ResultStore, StoredResult
from appliance.store.reviews import Review, ReviewStore, model_mask_name

log = logging.getLogger("fame_node.app")


@dataclass(frozen=True)
class FrameData:
    """One analysed frame: the picture, the model's mask, its findings and its review."""

    frame_index: int
    image: NDArray[np.uint8]  # grey (rows, columns); RGB where only the overlay PNG is left
    model_mask: NDArray[np.uint8] | None  # {0, 1}; None when the mask file is missing
    result: StoredResult
    review: Review | None = None
    reviewed_mask: NDArray[np.uint8] | None = None  # {0, 1}, a clinician's redrawn mask

    @property
    def mask(self) -> NDArray[np.uint8] | None:
        """The mask that stands: the clinician's where redrawn, else the model's."""
        return self.reviewed_mask if self.reviewed_mask is not None else self.model_mask


@dataclass(frozen=True)
class Case:
    """A done job loaded for viewing. `meta` holds identifiers: kept out of `repr`."""

    job: Job
    meta: ImageMeta = field(repr=False)
    frames: tuple[FrameData, ...]
    note: str | None = None  # why the picture is not the original file, when it is not
    overlay_only: bool = False  # frames are the stored overlay PNGs (mask burned in)


class CaseError(FameNodeError):
    """The case cannot be shown (the job is not done, or has no results)."""


class CaseLoader:
    """Reads cases back from the store and the files (see the module docstring)."""

    def __init__(
        self,
        queue: JobQueue,
        results: ResultStore,
        reviews: ReviewStore,
        *,
        max_frames: int = 16,
        max_pixels: int = 50_000_000,
    ) -> None:
        self._queue = queue
        self._results = results
        self._reviews = reviews
        self._max_frames = max_frames
        self._max_pixels = max_pixels

    def load(self, job_id: int) -> Case:
        """The case of job `job_id`.

        Raises:
            CaseError: the job is not done or has no results.
            StoreError: the store cannot be read (JobNotFoundError for an unknown id).
        """
        job = self._queue.get(job_id)
        meta = self._results.image_meta(job_id)
        results = self._results.results_for_job(job_id)
        if job.status != "done" or meta is None or not results:
            raise CaseError(f"job {job_id} is {job.status}: there is no result to show")
        images, note = self._frames(job, meta, results)
        reviews = self._reviews.current_for_job(job_id)
        frames = tuple(
            _frame_data(r, images[r.frame_index], reviews.get(r.frame_index)) for r in results
        )
        return Case(job, meta, frames, note, overlay_only=note is not None)

    def with_reviews(self, case: Case) -> Case:
        """`case` with its frames' current reviews read again (after a decision)."""
        reviews = self._reviews.current_for_job(case.job.id)
        frames = tuple(
            _frame_data(f.result, f.image, reviews.get(f.frame_index), f.model_mask)
            for f in case.frames
        )
        return replace(case, frames=frames)

    def _frames(
        self, job: Job, meta: ImageMeta, results: list[StoredResult]
    ) -> tuple[dict[int, NDArray[np.uint8]], str | None]:
        wanted = [r.frame_index for r in results]
        with tempfile.TemporaryDirectory(prefix="fame-viewer-") as tmp:
            # Copied once (no link followed, no FIFO opened) and hashed as copied: what is
            # shown is exactly the bytes the model analysed, or the stored overlay.
            problem, copy = _verified_copy(job, Spool(Path(tmp)))
            if copy is not None:
                try:
                    return self._read_source(copy, meta, wanted), None
                except (FameNodeError, OSError, KeyError) as exc:
                    problem = f"the original file can no longer be read ({exc})"
                    # The reason may carry identifiers: the log names the job only.
                    log.warning("job %d: input not readable again (%s)", job.id, type(exc).__name__)
        overlays = {r.frame_index: _overlay_png(r) for r in results}
        return overlays, f"{problem}; showing the overlay stored when it was analysed"

    def _read_source(
        self, path: Path, meta: ImageMeta, wanted: list[int]
    ) -> dict[int, NDArray[np.uint8]]:
        loaded = read_file(path, max_frames=self._max_frames, max_pixels=self._max_pixels)
        by_index = dict(zip(loaded.meta.frame_indices, loaded.frames, strict=True))
        if not set(wanted) <= set(by_index):
            # The node was configured with another max_frames when it analysed the file.
            loaded = read_file(
                path,
                max_frames=max(meta.n_frames_total, 1),
                max_pixels=max(self._max_pixels, 4 * 10**9),
            )
            by_index = dict(zip(loaded.meta.frame_indices, loaded.frames, strict=True))
        return {i: by_index[i] for i in wanted}


def _verified_copy(job: Job, spool: Spool) -> tuple[str | None, Path | None]:
    """(None, a copy holding the bytes the job analysed), or (why not, None)."""
    path = Path(job.path)
    if not path.is_file():
        return f"the original file {path} is no longer there", None
    try:
        snap = spool.take(path, max_bytes=job.size or (1 << 30))
    except (InputError, TransientError) as exc:
        return f"the original file {path} cannot be read again ({exc})", None
    if job.sha256 and snap.sha256 != job.sha256:
        return f"the file at {path} has changed since it was analysed", None
    return None, snap.spool_path


def _result_file(result: StoredResult, name: str) -> Path | None:
    return None if result.result_dir is None else Path(result.result_dir) / name


def _read_mask(path: Path | None) -> NDArray[np.uint8] | None:
    if path is None:
        return None
    try:
        with Image.open(path) as im:
            return (np.asarray(im.convert("L")) > 0).astype(np.uint8)
    except OSError:
        return None


def _overlay_png(result: StoredResult) -> NDArray[np.uint8]:
    path = _result_file(result, f"frame_{result.frame_index:03d}_overlay.png")
    try:
        if path is None:
            raise OSError("no results folder")
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except OSError:
        mask = _read_mask(_result_file(result, model_mask_name(result.frame_index)))
        shape = (256, 256) if mask is None else mask.shape
        return np.zeros(shape, dtype=np.uint8)


def _frame_data(
    result: StoredResult,
    image: NDArray[np.uint8],
    review: Review | None,
    model_mask: NDArray[np.uint8] | None = None,
) -> FrameData:
    if model_mask is None:
        model_mask = _read_mask(_result_file(result, model_mask_name(result.frame_index)))
    reviewed = None
    if review is not None and review.decision == "corrected" and review.mask_path is not None:
        reviewed = _read_mask(review.mask_path)
    return FrameData(result.frame_index, image, model_mask, result, review, reviewed)


# -- display state --------------------------------------------------------------------------


class Change(StrEnum):
    """What changed, as `ViewerModel.changed` reports it."""

    CASE = "case"  # another case (or none)
    FRAME = "frame"  # another frame of the case
    DISPLAY = "display"  # overlay, opacity, fill / outline, window / level
    MASK = "mask"  # the displayed mask (editing, a saved correction)
    REVIEW = "review"  # the case's reviews were read again


@dataclass(frozen=True)
class Display:
    overlay: bool = True
    opacity: float = 0.35
    fill: bool = True
    outline: bool = True
    window: tuple[float, float] = FULL_WINDOW  # (centre, width)


class ViewerModel:
    """The case on screen and how it is displayed. Events: `changed` (a `Change`)."""

    def __init__(self, load: Callable[[int], Case], reload_reviews: Callable[[Case], Case]):
        self._load = load
        self._reload_reviews = reload_reviews
        self._case: Case | None = None
        self._position = 0
        self._display = Display()
        self._editor: MaskEditor | None = None
        self.changed: Event[Change] = Event()

    # -- the case -------------------------------------------------------------------------
    @property
    def case(self) -> Case | None:
        return self._case

    def open(self, job_id: int) -> Case:
        """Load and show job `job_id` (CaseError / StoreError when it cannot be)."""
        case = self._load(job_id)
        self._editor = None
        self._case = case
        self._position = 0
        self._display = replace(self._display, window=FULL_WINDOW)
        self.changed.emit(Change.CASE)
        return case

    def close_case(self) -> None:
        self._case = None
        self._editor = None
        self.changed.emit(Change.CASE)

    def refresh_reviews(self) -> None:
        """Read the case's reviews again (after a decision, or another reviewer's)."""
        if self._case is not None:
            self._case = self._reload_reviews(self._case)
            self.changed.emit(Change.REVIEW)

    # -- frames ---------------------------------------------------------------------------
    @property
    def n_frames(self) -> int:
        return 0 if self._case is None else len(self._case.frames)

    @property
    def position(self) -> int:
        """Position of the shown frame among the analysed frames (0-based)."""
        return self._position

    @property
    def frame(self) -> FrameData | None:
        return None if self._case is None else self._case.frames[self._position]

    def set_position(self, position: int) -> None:
        if self._case is None:
            return
        position = min(max(position, 0), self.n_frames - 1)
        if position != self._position:
            self._editor = None
            self._position = position
            self.changed.emit(Change.FRAME)

    def step(self, delta: int, *, wrap: bool = False) -> None:
        """Move `delta` frames; with `wrap` past the last frame back to the first (cine)."""
        if self.n_frames == 0:
            return
        target = self._position + delta
        self.set_position(target % self.n_frames if wrap else target)

    # -- display --------------------------------------------------------------------------
    @property
    def display(self) -> Display:
        return self._display

    def set_display(self, **changes: Any) -> None:
        """Change display settings by name (``set_display(opacity=0.5, outline=False)``)."""
        new = replace(self._display, **changes)
        if not 0.0 <= new.opacity <= 1.0:
            raise ValueError(f"opacity must be in 0..1, got {new.opacity}")
        if new != self._display:
            self._display = new
            self.changed.emit(Change.DISPLAY)

    def toggle_overlay(self) -> bool:
        self.set_display(overlay=not self._display.overlay)
        return self._display.overlay

    def set_window(self, centre: float, width: float) -> None:
        self.set_display(window=(float(centre), max(float(width), 1.0)))

    def adjust_window(self, d_centre: float, d_width: float) -> None:
        c, w = self._display.window
        self.set_window(c + d_centre, w + d_width)

    def reset_window(self) -> None:
        self.set_display(window=FULL_WINDOW)

    def auto_window(self) -> None:
        frame = self.frame
        if frame is not None:
            self.set_window(*auto_window(frame.image))

    # -- the mask shown and measured ------------------------------------------------------
    @property
    def editor(self) -> MaskEditor | None:
        return self._editor

    def start_editing(self) -> MaskEditor:
        """Begin redrawing the shown frame's mask (a copy of the mask that stands)."""
        frame = self.frame
        if frame is None or self._case is None or self._case.overlay_only:
            raise CaseError("this frame cannot be edited: the original image is not available")
        base = frame.mask if frame.mask is not None else np.zeros(frame.image.shape[:2], np.uint8)
        self._editor = MaskEditor(base)
        self._editor.changed.connect(lambda _e: self.changed.emit(Change.MASK))
        self._display = replace(self._display, overlay=True)
        self.changed.emit(Change.MASK)
        return self._editor

    def stop_editing(self) -> None:
        if self._editor is not None:
            self._editor = None
            self.changed.emit(Change.MASK)

    @property
    def shown_mask(self) -> NDArray[np.uint8] | None:
        """The mask on screen: being edited, else the clinician's, else the model's."""
        if self._editor is not None:
            return self._editor.mask
        frame = self.frame
        return None if frame is None else frame.mask

    @property
    def mask_rgb(self) -> RGB:
        """Orange for the model's mask, sky blue for a clinician's (edited or saved)."""
        frame = self.frame
        if self._editor is not None or (frame is not None and frame.reviewed_mask is not None):
            return REVIEWED_MASK_RGB
        return MODEL_MASK_RGB

    def measures(self) -> MaskMeasures | None:
        """Area and largest diameter of the shown mask (mm where the file is calibrated)."""
        frame = self.frame
        if frame is None or self._case is None:
            return None
        if self._editor is None and frame.reviewed_mask is None:
            r = frame.result
            if r.lesion_area_px is not None and r.max_diameter_px is not None:
                return MaskMeasures(
                    r.lesion_area_px,
                    r.lesion_area_mm2,
                    r.max_diameter_px,
                    r.max_diameter_mm,
                    r.n_lesions,
                )
        mask = self.shown_mask
        if mask is None:
            return None
        return measure_mask(mask, self._case.meta.pixel_spacing_mm)
