"""Building node stores for tests: a node folder and done jobs written through the store.

`add_done_job` stores what the pipeline stores for a PNG input (the input file in the
inbox, the job, the mask and overlay PNGs by `write_frame_files`, the image and result
rows by `ResultStore.save_completed`), with findings the test chooses. Tests that need a
real model's findings run `fame-node process` instead (tests/gui).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from appliance.config import NodeConfig, PathsConfig
from appliance.io.types import ImageMeta
from appliance.results.writers import job_result_dir, write_frame_files
from appliance.store.jobs import JobQueue
from appliance.store.results import FrameResultRow, ResultStore

CLASSES = ("normal", "benign", "malignant")


def node_config(root: Path) -> NodeConfig:
    config = NodeConfig(paths=PathsConfig(root=root))
    for name in ("inbox", "work", "results", "quarantine"):
        config.folder(name).mkdir(parents=True, exist_ok=True)
    return config


def speckle_image(rows: int = 120, cols: int = 160, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(40, 140, size=(rows, cols)).astype(np.uint8)
    img[40:80, 50:110] //= 3  # a dark, lesion-like region
    return img


def lesion_mask(rows: int = 120, cols: int = 160) -> np.ndarray:
    mask = np.zeros((rows, cols), np.uint8)
    mask[40:80, 50:110] = 1
    return mask


def probabilities(diagnosis: str, confidence: float) -> dict[str, float]:
    rest = (1 - confidence) / (len(CLASSES) - 1)
    return {c: confidence if c == diagnosis else rest for c in CLASSES}


def add_done_job(
    config: NodeConfig,
    name: str,
    *,
    diagnosis: str = "benign",
    confidence: float = 0.9,
    flags: Sequence[str] = (),
    patient_name: str | None = "Doe^Jane",
    patient_id: str | None = "PID-0001",
    study_date: str | None = "20240131",
    spacing_mm: tuple[float, float] | None = None,
    seed: int = 0,
) -> int:
    """A done job for a new PNG `name` in the inbox; returns its id."""
    image = speckle_image(seed=seed)
    path = config.folder("inbox") / name
    Image.fromarray(image).save(path)
    data = path.read_bytes()
    mask = lesion_mask()
    with JobQueue(config.database_path) as queue, ResultStore(config.database_path) as results:
        job = queue.enqueue(path, hashlib.sha256(data).hexdigest(), len(data)).job
        claimed = queue.claim(job.id)
        if claimed is None:
            raise RuntimeError(f"job {job.id} could not be claimed")
        out = job_result_dir(config.folder("results"), job.id)
        write_frame_files(out, 0, image, mask)
        area = float(mask.sum())
        row = FrameResultRow(
            frame_index=0,
            diagnosis=diagnosis,
            probabilities=probabilities(diagnosis, confidence),
            confidence=confidence,
            lesion_area_px=area,
            lesion_area_mm2=None if spacing_mm is None else area * spacing_mm[0] * spacing_mm[1],
            max_diameter_px=70.0,
            max_diameter_mm=None if spacing_mm is None else 7.0,
            n_lesions=1,
            flags=list(flags),
            result_dir=str(out),
        )
        meta = ImageMeta(
            source_format="png",
            patient_name=patient_name,
            patient_id=patient_id,
            study_date=study_date,
            pixel_spacing_mm=spacing_mm,
        )
        results.save_completed(job.id, meta, [row], "test-model@1.0", "CPUExecutionProvider")
    return job.id


def add_rejected_job(config: NodeConfig, name: str, reason: str) -> int:
    path = config.folder("inbox") / name
    path.write_bytes(b"not an image")
    with JobQueue(config.database_path) as queue:
        job = queue.enqueue(path, hashlib.sha256(path.read_bytes()).hexdigest(), 12).job
        queue.claim(job.id)
        queue.mark_rejected(job.id, "unsupported_format", reason)
    return job.id
