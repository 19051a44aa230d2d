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
Folders are named by job id, never by patient data. Every file is written durably
(`appliance.results.durable`: temporary name, fsync, rename), so a reader never sees half a
file and a power cut after the job's ``done`` commit cannot leave empty files. Each
function returns with its files durable; `write_frame_files(..., sync_dir=False)` leaves
the folder sync to `write_result_json` (a job's last file) or `sync_job_dir`: one folder
fsync per job. Measured on the dev VM (ext4), 30 BUSI images of 471x562: 2.2 ms of fsync
per image with one folder sync per job, 2.5 ms with one per frame, 12-16 ms in all.
result.json is strict JSON (`appliance.results.strict_json`): non-finite numbers are null.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image

from appliance.postprocess import outer_contours
from appliance.results import strict_json
from appliance.results.durable import make_folder, sync_folder, write_atomic

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
    # zlib level 1: overlay files about 1 % larger than the default level 6, written about
    # 2x faster (30 BUSI images).
    im = picture if isinstance(picture, Image.Image) else Image.fromarray(picture)
    # The folder is synced by the caller, once for both files of a frame or once per job.
    write_atomic(path, lambda fh: im.save(fh, format="PNG", compress_level=1), sync_dir=False)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as strict JSON (non-finite numbers as null), durably, folder synced."""
    text = strict_json.dumps(data, indent=2)
    write_atomic(path, lambda fh: fh.write(text.encode("utf-8")))


@dataclass(frozen=True)
class FrameFiles:
    mask: Path
    overlay: Path


def job_result_dir(results_root: Path, job_id: int) -> Path:
    return results_root / f"job-{job_id:06d}"


def sync_job_dir(out_dir: Path) -> None:
    """Make every file renamed into `out_dir` durable (one folder fsync).

    `write_result_json` does this itself; call it only for a job that writes frame files
    and no result.json, before its database commit."""
    sync_folder(out_dir)


def write_frame_files(
    out_dir: Path,
    frame_index: int,
    frame: NDArray[np.uint8],
    mask: NDArray[np.uint8],
    *,
    sync_dir: bool = True,
) -> FrameFiles:
    """Write the frame's mask and overlay PNGs, durable when this returns.

    `sync_dir=False` leaves the folder sync (which makes the renames durable) to the
    job's `write_result_json` or `sync_job_dir`, one folder fsync per job instead of one
    per frame; the files' own content is fsync'd either way.
    """
    make_folder(out_dir)  # a new job folder is synced into results/ at once
    files = FrameFiles(
        mask=out_dir / f"frame_{frame_index:03d}_mask.png",
        overlay=out_dir / f"frame_{frame_index:03d}_overlay.png",
    )
    _write_png(files.mask, (mask > 0).astype(np.uint8) * 255)
    _write_png(files.overlay, overlay_image(frame, mask))
    if sync_dir:
        sync_folder(out_dir)
    return files


def write_result_json(
    out_dir: Path, summary: dict[str, Any], frames: Sequence[dict[str, Any]]
) -> Path:
    """Write the job's result.json last: its folder sync also makes the frame files'
    renames durable."""
    path = out_dir / "result.json"
    make_folder(out_dir)
    write_json(path, {**summary, "frames": list(frames)})
    return path
