"""Writes one job's result files into its own folder under ``results/``.

Per frame ``frame_NNN_mask.png`` (0 / 255) and ``frame_NNN_overlay.png`` (the frame with
the lesion as a translucent fill and an outline), and one ``result.json`` for the job.
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

# Okabe-Ito orange: distinguishable for the common colour-vision deficiencies, and
# distinct from the grey scale of ultrasound.
LESION_RGB = (230, 159, 0)
FILL_ALPHA = 0.35


def overlay(frame: NDArray[np.uint8], mask: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """RGB picture of `frame` with `mask` as a translucent fill and an outline."""
    rgb: NDArray[np.uint8] = np.asarray(cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB), dtype=np.uint8)
    m = mask > 0
    if m.any():
        colour = np.empty_like(rgb)
        colour[:] = LESION_RGB
        blended = cv2.addWeighted(rgb, 1 - FILL_ALPHA, colour, FILL_ALPHA, 0)
        np.copyto(rgb, blended, where=m[:, :, None])
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        thickness = max(1, round(max(frame.shape) / 300))
        cv2.drawContours(rgb, contours, -1, LESION_RGB, thickness=thickness)
    return rgb


def _write_png(path: Path, array: NDArray[np.uint8]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    # zlib level 1: files about 10 % larger than the default level 6, written 3-4x faster
    # (PNG encoding was three quarters of the node's time per image; docs/PERFORMANCE.md).
    Image.fromarray(array).save(tmp, format="PNG", compress_level=1)
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
    _write_png(files.overlay, overlay(frame, mask))
    return files


def write_result_json(
    out_dir: Path, summary: dict[str, Any], frames: Sequence[dict[str, Any]]
) -> Path:
    path = out_dir / "result.json"
    write_json(path, {**summary, "frames": list(frames)})
    return path
