"""Pure image functions of the viewer: window / level, mask layers, measures, brush strokes.

Arrays in, arrays out; no I/O, no Qt. Frames are greyscale uint8 (rows, columns) as the
node's readers return them (or RGB (rows, columns, 3) where only a stored overlay is
left); masks are (rows, columns), non-zero = lesion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from appliance.app.display import RGB
from appliance.postprocess import max_feret_diameter

Image8 = NDArray[np.uint8]

FULL_WINDOW = (127.5, 255.0)  # (centre, width): the whole uint8 range, unchanged


def window_level(frame: NDArray[Any], centre: float, width: float) -> Image8:
    """Map grey values linearly so that ``centre ± width / 2`` spans 0..255 (clipped).

    `width` below 1 is taken as 1 (a hard threshold at `centre`).
    """
    w = max(float(width), 1.0)
    low = float(centre) - w / 2
    out = (frame.astype(np.float32) - low) * (255.0 / w)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def auto_window(
    frame: NDArray[Any], low_pct: float = 0.5, high_pct: float = 99.5
) -> tuple[float, float]:
    """(centre, width) spanning the frame's `low_pct`..`high_pct` percentiles."""
    lo, hi = np.percentile(frame, [low_pct, high_pct])
    width = max(float(hi - lo), 1.0)
    return float(lo) + width / 2, width


def to_rgb(frame: NDArray[Any]) -> Image8:
    """A grey (rows, columns) or RGB frame as RGB uint8."""
    if frame.ndim == 2:
        return np.repeat(frame.astype(np.uint8)[:, :, None], 3, axis=2)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return frame.astype(np.uint8)
    raise ValueError(f"expected a (rows, columns) or (rows, columns, 3) frame, got {frame.shape}")


def mask_rgba(mask: NDArray[Any], rgb: RGB, opacity: float) -> Image8:
    """An RGBA layer: `rgb` at `opacity` (0..1) on the mask, transparent elsewhere."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in 0..1, got {opacity}")
    out = np.zeros((*mask.shape[:2], 4), dtype=np.uint8)
    m = mask > 0
    out[m, 0], out[m, 1], out[m, 2] = rgb
    out[m, 3] = round(255 * opacity)
    return out


def mask_contours(mask: NDArray[Any]) -> list[NDArray[np.float64]]:
    """The outer and hole boundaries of the mask as closed polygons, (N, 2) arrays of (x, y).

    Coordinates are those of the displayed image, where pixel (column i, row j) covers
    [i, i + 1) x [j, j + 1); the polygons run a quarter pixel inside the mask's edge, so
    an outline drawn through them hugs the lesion at any zoom.
    """
    m = (mask > 0).astype(np.uint8)
    if not m.any():
        return []
    # Upsample 2x so that the traced boundary runs along pixel edges, not centres.
    big = cv2.resize(m, (m.shape[1] * 2, m.shape[0] * 2), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(big, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1, 2).astype(np.float64) / 2.0 + 0.25 for c in contours if len(c) >= 2]


def compose(
    frame: NDArray[Any],
    mask: NDArray[Any] | None,
    *,
    rgb: RGB,
    opacity: float,
    fill: bool = True,
    outline: bool = True,
    outline_px: int = 1,
) -> Image8:
    """The frame with the mask blended in as a fill and / or drawn as an outline (RGB)."""
    out = to_rgb(frame).astype(np.float32)
    if mask is not None and (fill or outline):
        m = mask > 0
        colour = np.array(rgb, dtype=np.float32)
        if fill and opacity > 0:
            out[m] = (1 - opacity) * out[m] + opacity * colour
        if outline:
            edge = m & ~cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            if outline_px > 1:
                kernel = np.ones((outline_px, outline_px), np.uint8)
                edge = cv2.dilate(edge.astype(np.uint8), kernel).astype(bool)
            out[edge] = colour
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class MaskMeasures:
    """Lesion area and largest (Feret) diameter; mm values None without pixel spacing."""

    area_px: float
    area_mm2: float | None
    max_diameter_px: float
    max_diameter_mm: float | None
    n_lesions: int | None = None


def measure_mask(mask: NDArray[Any], spacing_mm: tuple[float, float] | None) -> MaskMeasures:
    """Area and largest diameter of the mask, in mm where `spacing_mm` (row, col) is known."""
    m = (mask > 0).astype(np.uint8)
    area = float(m.sum())
    diameter = max_feret_diameter(m)
    n = int(cv2.connectedComponents(m, connectivity=8)[0]) - 1
    if spacing_mm is None:
        return MaskMeasures(area, None, diameter, None, n)
    mm = max_feret_diameter(m, spacing_mm)
    return MaskMeasures(area, area * spacing_mm[0] * spacing_mm[1], diameter, mm, n)


def paint_stroke(
    mask: NDArray[np.uint8],
    start: tuple[float, float],
    end: tuple[float, float],
    radius: float,
    value: int,
) -> None:
    """Paint (value 1) or erase (value 0) a round brush from `start` to `end` (x, y), in place."""
    if value not in (0, 1):
        raise ValueError(f"a brush paints 1 (lesion) or 0 (eraser), got {value}")
    r = max(round(radius), 0)
    p0 = (round(start[0]), round(start[1]))
    p1 = (round(end[0]), round(end[1]))
    cv2.line(mask, p0, p1, color=value, thickness=max(2 * r + 1, 1), lineType=cv2.LINE_8)
    cv2.circle(mask, p0, r, color=value, thickness=-1)
    cv2.circle(mask, p1, r, color=value, thickness=-1)
