"""From network outputs to findings: pure functions over arrays, no I/O.

`analyse_lesions` thresholds a lesion probability map (already mapped back to the
frame's own pixels), drops components too small to be a lesion, and measures what is
left: area and largest diameter (Feret) in pixels and, where the pixel spacing is known,
in millimetres. `diagnose` turns class probabilities into a diagnosis plus the flags a
reviewer should see.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

Mask = NDArray[np.uint8]


@dataclass(frozen=True)
class LesionFindings:
    mask: Mask  # {0, 1}, the frame's shape
    n_lesions: int
    area_px: float
    area_mm2: float | None
    max_diameter_px: float
    max_diameter_mm: float | None


def clean_mask(prob: NDArray[Any], threshold: float, min_area_px: float) -> tuple[Mask, int]:
    """Threshold `prob`, drop components smaller than `min_area_px`, fill holes.

    Returns the binary mask and the number of components kept. The work is done inside
    the bounding box of the thresholded pixels (a lesion is a small part of a frame).
    """
    if prob.ndim != 2:
        raise ValueError(f"expected a 2-D probability map, got shape {prob.shape}")
    binary = (prob >= threshold).astype(np.uint8)
    mask = np.zeros_like(binary)
    box = _box(binary)
    if box is None:
        return mask, 0
    crop = binary[box]
    n, labels, stats, _ = cv2.connectedComponentsWithStats(crop, connectivity=8)
    keep = np.zeros(n, dtype=np.uint8)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area_px
    kept = int(keep.sum())
    if kept:
        sub = keep[labels]
        # Fill holes: a lesion is a region, not a ring (speckle can punch holes in it).
        contours, _ = cv2.findContours(sub, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(sub, contours, -1, color=1, thickness=cv2.FILLED)
        mask[box] = sub
    return mask, kept


def _box(mask: NDArray[np.uint8]) -> tuple[slice, slice] | None:
    """The bounding box of the non-zero pixels of a uint8 mask, or None if it is empty."""
    x, y, w, h = cv2.boundingRect(mask)
    if w == 0 or h == 0:
        return None
    return slice(y, y + h), slice(x, x + w)


def outer_contours(mask: NDArray[Any]) -> list[Any]:
    """The outer contours of the non-zero pixels of a 2-D mask, in the mask's (x, y)
    coordinates, traced inside their bounding box only; [] for an empty mask."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (rows, columns), got shape {mask.shape}")
    m = (mask > 0).astype(np.uint8)
    box = _box(m)
    if box is None:
        return []
    offset = (box[1].start, box[0].start)
    contours, _ = cv2.findContours(m[box], cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE, offset=offset)
    return list(contours)


def hull_points(mask: NDArray[Any]) -> NDArray[np.float64]:
    """(x=col, y=row) points of the convex hull of all mask pixel centres; (0, 2) if empty.

    The extreme points of a region lie on its outer contours, so the hull of those is
    the hull of the region."""
    contours = outer_contours(mask)
    if not contours:
        return np.zeros((0, 2), dtype=np.float64)
    pts = np.concatenate([c.reshape(-1, 2) for c in contours]).astype(np.float64)
    if len(pts) > 2:
        return cv2.convexHull(pts.astype(np.float32)).reshape(-1, 2).astype(np.float64)
    return pts


def feret_from_hull(hull: NDArray[np.float64], spacing: tuple[float, float] = (1.0, 1.0)) -> float:
    """Largest distance between two hull points, in units of `spacing` (row, col)."""
    if len(hull) == 0:
        return 0.0
    xy = hull * np.array([spacing[1], spacing[0]])  # points are (x=col, y=row)
    diff = xy[:, None, :] - xy[None, :, :]
    return float(np.sqrt((diff**2).sum(axis=-1)).max())


def max_feret_diameter(mask: NDArray[Any], spacing: tuple[float, float] = (1.0, 1.0)) -> float:
    """Largest distance between two mask pixel centres, in units of `spacing` (row, col).

    Computed over the convex hull of the mask, which contains the extreme points;
    0 for an empty mask, 0 for a single pixel.
    """
    return feret_from_hull(hull_points(mask), spacing)


def analyse_lesions(
    prob: NDArray[Any],
    *,
    threshold: float,
    min_area_px: float,
    spacing_mm: tuple[float, float] | None,
) -> LesionFindings:
    mask, n = clean_mask(prob, threshold, min_area_px)
    area_px = float(cv2.countNonZero(mask))
    hull = hull_points(mask)
    diameter_px = feret_from_hull(hull)
    if spacing_mm is not None:
        area_mm2: float | None = area_px * spacing_mm[0] * spacing_mm[1]
        diameter_mm: float | None = feret_from_hull(hull, spacing_mm)
    else:
        area_mm2 = diameter_mm = None
    return LesionFindings(
        mask=mask,
        n_lesions=n,
        area_px=area_px,
        area_mm2=area_mm2,
        max_diameter_px=diameter_px,
        max_diameter_mm=diameter_mm,
    )


@dataclass(frozen=True)
class Diagnosis:
    label: str
    confidence: float
    probabilities: dict[str, float]
    flags: tuple[str, ...]


def above(score: float | None, threshold: float | None) -> bool:
    """Whether a score is flagged against its threshold: above it, or NaN (a score that could
    not be computed is no reassurance). No score or no threshold: never flagged."""
    return score is not None and threshold is not None and not score <= threshold


def diagnose(
    class_prob: NDArray[Any],
    classes: list[str],
    *,
    low_confidence: float,
    lesion_found: bool,
    normal_class: str = "normal",
    out_of_distribution: bool = False,
    high_uncertainty: bool = False,
) -> Diagnosis:
    """The most probable class, with flags for a reviewer.

    Flags: ``out_of_distribution`` (the image is unlike the breast ultrasound the model was
    trained on: its diagnosis means nothing, whatever its confidence), ``high_uncertainty``
    (the fold models of a segmentation ensemble disagree on the lesion map more than the
    bundle's threshold: check the outline), ``low_confidence`` (top probability below the
    threshold) and ``segmentation_disagrees`` (a lesion was segmented on an image classified
    normal, or none on an image classified benign / malignant).
    """
    p = np.asarray(class_prob, dtype=np.float64).reshape(-1)
    if p.shape[0] != len(classes):
        raise ValueError(f"{p.shape[0]} class probabilities for {len(classes)} classes")
    top = int(p.argmax())
    label = classes[top]
    flags: list[str] = ["out_of_distribution"] if out_of_distribution else []
    if high_uncertainty:
        flags.append("high_uncertainty")
    if p[top] < low_confidence:
        flags.append("low_confidence")
    if normal_class in classes and (label == normal_class) == lesion_found:
        flags.append("segmentation_disagrees")
    return Diagnosis(
        label=label,
        confidence=float(p[top]),
        probabilities={c: float(v) for c, v in zip(classes, p, strict=True)},
        flags=tuple(flags),
    )
