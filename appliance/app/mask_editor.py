"""Redrawing a lesion mask with a brush and an eraser, stroke by stroke, with undo.

The editor works on its own copy of the mask; nothing is stored until the review service
saves `mask` as a correction. Strokes are kept as snapshots taken before each stroke, so
`undo` restores the mask exactly as it was.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

from appliance.app.events import Event
from appliance.app.imaging import paint_stroke

MIN_RADIUS = 1.0
MAX_RADIUS = 200.0
MAX_UNDO = 50


class Tool(StrEnum):
    BRUSH = "brush"
    ERASER = "eraser"


class MaskEditor:
    """A mask being redrawn. Events: `changed` after every change of `mask`."""

    def __init__(self, mask: NDArray[np.generic], *, radius: float = 8.0) -> None:
        if np.asarray(mask).ndim != 2:
            raise ValueError(f"expected a 2-D mask, got shape {np.asarray(mask).shape}")
        self._mask = (np.asarray(mask) > 0).astype(np.uint8)
        self._original = self._mask.copy()
        self._undo: list[NDArray[np.uint8]] = []
        self._last: tuple[float, float] | None = None
        self.tool = Tool.BRUSH
        self._radius = radius
        self.changed: Event[MaskEditor] = Event()

    @property
    def mask(self) -> NDArray[np.uint8]:
        """The mask as drawn so far, {0, 1} (a read-only view)."""
        view = self._mask.view()
        view.flags.writeable = False
        return view

    @property
    def radius(self) -> float:
        return self._radius

    @radius.setter
    def radius(self, value: float) -> None:
        self._radius = float(min(max(value, MIN_RADIUS), MAX_RADIUS))

    @property
    def modified(self) -> bool:
        return not np.array_equal(self._mask, self._original)

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    def begin_stroke(self, x: float, y: float) -> None:
        """Start a stroke of the current tool at image point (x, y)."""
        self._undo.append(self._mask.copy())
        del self._undo[:-MAX_UNDO]
        self._last = (x, y)
        self._paint(x, y)

    def extend_stroke(self, x: float, y: float) -> None:
        """Continue the stroke to (x, y); ignored when no stroke was begun."""
        if self._last is not None:
            self._paint(x, y)

    def end_stroke(self) -> None:
        self._last = None

    def clear(self) -> None:
        """Erase everything (one undoable step)."""
        self._undo.append(self._mask.copy())
        self._mask[:] = 0
        self.changed.emit(self)

    def undo(self) -> bool:
        """Take back the last stroke; False when there is none."""
        if not self._undo:
            return False
        self._mask = self._undo.pop()
        self._last = None
        self.changed.emit(self)
        return True

    def _paint(self, x: float, y: float) -> None:
        start = self._last if self._last is not None else (x, y)
        value = 1 if self.tool is Tool.BRUSH else 0
        paint_stroke(self._mask, start, (x, y), self._radius, value)
        self._last = (x, y)
        self.changed.emit(self)
