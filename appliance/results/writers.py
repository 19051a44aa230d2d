"""Writes one job's result files into its own folder under ``results/``.

Per frame ``frame_NNN_mask.png`` (0 / 255) and ``frame_NNN_overlay.png`` (the frame with
the lesion outlined), and one ``result.json`` for the job.

The overlay is the record of what the model found on the frame as it was analysed (the
GUI shows it when the input file is gone), so it keeps every grey value of the frame:
only the outline's own pixels are coloured (the GUI draws its own fill and opacity). It is
written as an 8-bit palette PNG, the frame's grey levels plus the outline colour in the
entry of the grey level the frame uses least (`overlay_image`): a third of the bytes of
RGB to compress, 4-6 ms per BUSI image instead of about 23 ms, which matters because
result files were most of the node's time per image (docs/PERFORMANCE.md).
Folders are named by job id, never by patient data. Every file is written to a temporary
name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image

from appliance.postprocess import outer_contours

# Okabe-Ito orange: distinguishable for the common colour-vision deficiencies, and
# distinct from the grey scale of ultrasound.
LESION_RGB = (230, 159, 0)


def overlay(frame: NDArray[np.uint8], mask: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """RGB picture of `frame` with the outline of `mask` drawn on it."""
    rgb: NDArray[np.uint8] = np.asarray(cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB), dtype=np.uint8)
    contours = outer_contours(mask)
    if contours:
        cv2.drawContours(rgb, contours, -1, LESION_RGB, thickness=_thickness(frame))
    return rgb


def overlay_image(frame: NDArray[np.uint8], mask: NDArray[np.uint8]) -> Image.Image:
    """`overlay` as an 8-bit palette image: the frame's grey levels plus the outline colour.

    The outline takes the palette entry of the grey level the frame uses least (usually
    none of its pixels); that level's pixels, if any, are shown one level brighter (or
    darker, at 255). Every other pixel is the frame's own grey value.
    """
    contours = outer_contours(mask)
    palette = np.repeat(np.arange(256, dtype=np.uint8), 3).reshape(256, 3)
    indexed = frame
    if contours:
        counts = np.bincount(frame.ravel(), minlength=256)
        index = int(counts.argmin())
        indexed = frame.copy()
        if counts[index]:
            indexed[frame == index] = index + 1 if index < 255 else index - 1
        cv2.drawContours(indexed, contours, -1, index, thickness=_thickness(frame))
        palette[index] = LESION_RGB
    im = Image.fromarray(np.ascontiguousarray(indexed))
    im.putpalette(palette.ravel().tolist())  # "L" becomes "P"; the values are the indices
    return im


def _thickness(frame: NDArray[np.uint8]) -> int:
    return max(1, round(max(frame.shape) / 300))


def _write_png(path: Path, picture: NDArray[np.uint8] | Image.Image) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    # zlib level 1: overlay files about 1 % larger than the default level 6, written about
    # 2x faster (30 BUSI images).
    im = picture if isinstance(picture, Image.Image) else Image.fromarray(picture)
    im.save(tmp, format="PNG", compress_level=1)
    os.replace(tmp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)


@dataclass(frozen=True)
class FrameFiles:
    mask: Path
    overlay: Path


def job_result_dir(results_root: Path, job_id: int) -> Path:
    return results_root / f"job-{job_id:06d}"


def write_frame_files(
    out_dir: Path, frame_index: int, frame: NDArray[np.uint8], mask: NDArray[np.uint8]
) -> FrameFiles:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = FrameFiles(
        mask=out_dir / f"frame_{frame_index:03d}_mask.png",
        overlay=out_dir / f"frame_{frame_index:03d}_overlay.png",
    )
    _write_png(files.mask, (mask > 0).astype(np.uint8) * 255)
    _write_png(files.overlay, overlay_image(frame, mask))
    return files


def write_result_json(
    out_dir: Path, summary: dict[str, Any], frames: Sequence[dict[str, Any]]
) -> Path:
    path = out_dir / "result.json"
    write_json(path, {**summary, "frames": list(frames)})
    return path
