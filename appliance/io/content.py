"""Is there anything for a model to judge? Pure checks over decoded frames: arrays in, verdict out.

A model asked about a 1 x 1 pixel, a 5-row strip left of a truncated file or a blank grey
screen still answers, and confidently; the node must not ask. Two rules:

* **Too small**: fewer than `min_side` rows or columns (`ReadLimits.min_side`, config
  `processing.min_image_side`, 32 by default). Checked from the header before decoding
  (`side_refusal`) and again on the frames as returned (a crop can shrink them).
* **Blank**: a frame is blank when it uses fewer than `MIN_GREY_LEVELS` distinct grey
  levels (a constant frame, or a near-constant 16-bit frame stretched to a few levels), or
  when its central 98 % of pixels (1st to 99th percentile) span at most
  `MAX_BLANK_SPREAD` grey levels (a constant frame with faint noise or a small label
  burned in). The thresholds sit far from real images: over every BUSI image and every
  frame of every pydicom-data ultrasound file, the fewest levels in use is 65, the
  narrowest central spread 92 grey levels (measured with this module's own statistics).

A cine keeps its non-blank frames (a note says which were dropped); when every frame is
blank, or any frame is too small, the whole input is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from appliance.io.types import Frame

MIN_GREY_LEVELS = 8
"""A frame with fewer distinct grey levels than this is blank."""
MAX_BLANK_SPREAD = 8
"""A frame whose 1st..99th percentile spans at most this many grey levels is blank."""


@dataclass(frozen=True)
class FrameStats:
    """The statistics the blank rule reads, from one histogram pass over a frame."""

    levels: int  # distinct grey levels in use
    low: int  # 1st percentile
    high: int  # 99th percentile

    @property
    def spread(self) -> int:
        return self.high - self.low


@dataclass(frozen=True)
class ContentVerdict:
    """What to keep of the frames: `keep` (positions into the input) and notes, or a refusal.

    `reason` is None when the input may be analysed; otherwise it says, for a person, why
    not (and `keep` is empty).
    """

    keep: tuple[int, ...]
    notes: tuple[str, ...] = ()
    reason: str | None = None


def frame_stats(frame: Frame) -> FrameStats:
    """Distinct levels and 1st / 99th percentiles of a uint8 frame (one bincount, ~0.3 ms)."""
    if frame.dtype != np.uint8 or frame.ndim != 2 or frame.size == 0:
        raise ValueError(
            f"frame_stats expects a non-empty 2-D uint8 frame, got {frame.dtype} {frame.shape}"
        )
    hist = np.bincount(frame.ravel(), minlength=256)
    cum = np.cumsum(hist)
    n = int(cum[-1])
    # The smallest level with at least 1 % (99 %) of the pixels at or below it.
    low = int(np.searchsorted(cum, 0.01 * n))
    high = int(np.searchsorted(cum, 0.99 * n))
    return FrameStats(levels=int(np.count_nonzero(hist)), low=low, high=high)


def blank_reason(stats: FrameStats) -> str | None:
    """Why a frame with these statistics is blank, in words, or None when it has content."""
    if stats.levels < MIN_GREY_LEVELS:
        many = "level" if stats.levels == 1 else "levels"
        return f"it has only {stats.levels} grey {many} (a real image has many more)"
    if stats.spread <= MAX_BLANK_SPREAD:
        return (
            f"98 % of its pixels lie within {stats.spread + 1} grey levels "
            f"({stats.low}..{stats.high} of 0..255): a uniform screen"
        )
    return None


def side_refusal(rows: int, cols: int, min_side: int) -> str | None:
    """Why an image of rows x cols is too small to judge, or None."""
    if rows >= min_side and cols >= min_side:
        return None
    return (
        f"the image is {cols} x {rows} pixels, smaller than the {min_side} pixels per side "
        "a model needs to judge it (processing.min_image_side): a strip or a thumbnail has "
        "nothing to analyse; send the full image"
    )


def judge_content(
    frames: list[Frame], min_side: int, indices: tuple[int, ...] | None = None
) -> ContentVerdict:
    """Which of `frames` (as returned by a reader) have something for a model to judge.

    `indices` are the frames' numbers in the file (`ImageMeta.frame_indices`), used to name
    the frames left out; positions 0, 1, ... when None.
    """
    if not frames:
        return ContentVerdict(keep=(), reason="the file holds no frames: send the image again")
    for frame in frames:
        too_small = side_refusal(frame.shape[0], frame.shape[1], min_side)
        if too_small is not None:
            return ContentVerdict(keep=(), reason=too_small)
    blank = [blank_reason(frame_stats(f)) for f in frames]
    keep = tuple(i for i, why in enumerate(blank) if why is None)
    if not keep:
        first = blank[0]
        what = "the image is blank" if len(frames) == 1 else f"all {len(frames)} frames are blank"
        return ContentVerdict(
            keep=(),
            reason=(
                f"{what}: {first}; there is nothing for a model to judge: check the export "
                "(a frozen or blank screen, or a failed export) and send the image again"
            ),
        )
    if len(keep) == len(frames):
        return ContentVerdict(keep=keep)
    numbers = indices if indices is not None and len(indices) == len(frames) else range(len(frames))
    dropped = [str(n) for n, why in zip(numbers, blank, strict=True) if why is not None]
    note = f"blank frames left out: {', '.join(dropped)} ({len(dropped)} of {len(frames)} read)"
    return ContentVerdict(keep=keep, notes=(note,))
