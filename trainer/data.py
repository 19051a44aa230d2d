"""BUSI-style data: manifest reading, image and mask loading, preprocessing, cache, augmentation.

The manifest is a CSV with one row per image: ``image``, ``label``, ``masks``
(``;``-separated, relative to the manifest's folder), ``split`` (train / val / test /
exclude). Images are read with Pillow and converted to grey with ``convert("L")``, as the
node's reader does; the lesion mask is the union of the listed mask files. Every frame goes
through `appliance.preprocess.preprocess` and every mask through `letterbox_mask`, so
training sees exactly what inference sees.

Preprocessed arrays are cached in one ``.npz`` per (preprocessing parameters, file contents)
under a cache folder (``.cache/`` in the repository root by default): a rerun with the
same data and parameters loads in a second, and any change of either makes a new key.

Augmentation (`augment_batch`) runs in torch on whole batches: random horizontal flip,
rotation, zoom and brightness / contrast jitter, the geometric part applied identically to
every channel (image, lesion map, mask). No vertical flip: ultrasound depth has a direction.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from PIL import Image
from torch import Tensor

from appliance.bundle import sha256_file
from appliance.dataset import Case, DatasetError, read_dataset_manifest
from appliance.preprocess import PreprocessParams, letterbox_mask, preprocess
from trainer.models.classifier import CLASSES

SPLITS = ("train", "val", "test")
CACHE_FORMAT = 1


class DataError(ValueError):
    """The manifest or one of the files it names cannot be used."""


Record = Case
"""One manifest row (`appliance.dataset.Case`); paths resolved against the manifest."""


@dataclass(frozen=True)
class ArraySet:
    """Preprocessed arrays of one split.

    images: (N, S, S) float32; masks: (N, S, S) uint8 in {0, 1}; labels: (N,) int64 indices
    into `CLASSES`; names: the manifest's relative image paths.
    """

    images: NDArray[np.float32]
    masks: NDArray[np.uint8]
    labels: NDArray[np.int64]
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)

    def class_counts(self) -> list[int]:
        return [int((self.labels == k).sum()) for k in range(len(CLASSES))]


def manifest_label(manifest: Path) -> str:
    """A manifest as bundles record it: its data set's folder and name, no host path."""
    return f"{manifest.parent.name}/{manifest.name}"


def read_manifest(manifest: Path) -> list[Record]:
    """Read a manifest CSV (`appliance.dataset`); rows whose split is ``exclude`` are dropped.

    Raises DataError for a missing column, an unknown label or split, or a missing file.
    """
    try:
        cases = read_dataset_manifest(manifest)
    except DatasetError as exc:
        raise DataError(str(exc)) from exc
    for case in cases:
        where = f"{manifest}:{case.line}"
        if case.split not in SPLITS:
            raise DataError(
                f"{where}: split {case.split!r}, expected one of {[*SPLITS, 'exclude']}"
            )
        if case.label not in CLASSES:
            raise DataError(f"{where}: label {case.label!r}, expected one of {CLASSES}")
        for path in (case.image, *case.masks):
            if not path.is_file():
                raise DataError(f"{where}: file {path} does not exist")
    return cases


def load_grey(path: Path) -> NDArray[np.uint8]:
    """Read an image file as 8-bit grey with Pillow's ``convert("L")`` (ITU-R 601-2 luma)."""
    with Image.open(path) as img:
        return np.asarray(img.convert("L"), dtype=np.uint8)


def load_mask(paths: Sequence[Path], shape: tuple[int, int]) -> NDArray[np.uint8]:
    """Union (> 0) of the mask files; an empty list gives an empty mask of `shape`."""
    union = np.zeros(shape, dtype=np.uint8)
    for path in paths:
        mask = load_grey(path)
        if mask.shape != shape:
            raise DataError(f"mask {path} has shape {mask.shape}, its image has shape {shape}")
        union |= (mask > 0).astype(np.uint8)
    return union


def load_example(
    record: Record, params: PreprocessParams
) -> tuple[NDArray[np.float32], NDArray[np.uint8]]:
    """Preprocessed image and letterboxed mask of one record, both (S, S)."""
    grey = load_grey(record.image)
    mask = load_mask(record.masks, (grey.shape[0], grey.shape[1]))
    image, _ = preprocess(grey, params)
    return image, letterbox_mask(mask, params.size)


def cache_key(records: Sequence[Record], params: PreprocessParams) -> str:
    """Hash of the preprocessing parameters and the content of every file the records name."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": CACHE_FORMAT, **params.to_dict()}, sort_keys=True).encode())
    for rec in records:
        h.update(f"{rec.split}|{rec.label}|{rec.image.name}".encode())
        for path in (rec.image, *rec.masks):
            h.update(sha256_file(path).encode())
    return h.hexdigest()[:24]


def load_dataset(
    manifest: Path, params: PreprocessParams, cache_dir: Path | None
) -> dict[str, ArraySet]:
    """Preprocessed arrays of every split in `manifest` (``exclude`` rows dropped), cached."""
    records = read_manifest(manifest)
    root = manifest.parent
    cache_file: Path | None = None
    if cache_dir is not None:
        cache_file = cache_dir / f"data-{cache_key(records, params)}.npz"
        if cache_file.is_file():
            return _split_arrays(dict(np.load(cache_file, allow_pickle=False)))
    images = np.zeros((len(records), params.size, params.size), dtype=np.float32)
    masks = np.zeros((len(records), params.size, params.size), dtype=np.uint8)
    for i, rec in enumerate(records):
        images[i], masks[i] = load_example(rec, params)
    arrays: dict[str, NDArray[Any]] = {
        "images": images,
        "masks": masks,
        "labels": np.array([CLASSES.index(r.label) for r in records], dtype=np.int64),
        "splits": np.array([r.split for r in records]),
        "names": np.array([r.image.relative_to(root).as_posix() for r in records]),
    }
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp.npz")
        np.savez(tmp, allow_pickle=False, **arrays)
        tmp.replace(cache_file)  # atomic: a killed run never leaves a half-written cache
    return _split_arrays(arrays)


def load_datasets(
    manifests: Sequence[Path], params: PreprocessParams, cache_dir: Path | None
) -> dict[str, ArraySet]:
    """`load_dataset` of every manifest, split by split, in order (several sites at once).

    Names are prefixed with the manifest's folder name (``busbra/images/bus_0001-l.png``),
    so images of two sites never share a name.
    """
    if not manifests:
        raise DataError("no manifest given: pass at least one manifest.csv")
    parts = [(m.parent.name, load_dataset(m, params, cache_dir)) for m in manifests]
    if len(parts) == 1:
        return parts[0][1]
    out: dict[str, ArraySet] = {}
    for split in SPLITS:
        sets = [(site, data[split]) for site, data in parts]
        out[split] = ArraySet(
            images=np.concatenate([a.images for _, a in sets]),
            masks=np.concatenate([a.masks for _, a in sets]),
            labels=np.concatenate([a.labels for _, a in sets]),
            names=tuple(f"{site}/{n}" for site, a in sets for n in a.names),
        )
    return out


def _split_arrays(arrays: dict[str, NDArray[Any]]) -> dict[str, ArraySet]:
    out: dict[str, ArraySet] = {}
    splits = arrays["splits"].astype(str)
    for split in SPLITS:
        sel = splits == split
        out[split] = ArraySet(
            images=arrays["images"][sel].astype(np.float32),
            masks=arrays["masks"][sel].astype(np.uint8),
            labels=arrays["labels"][sel].astype(np.int64),
            names=tuple(str(n) for n in arrays["names"][sel]),
        )
    return out


@dataclass(frozen=True)
class AugmentParams:
    """Ranges of the random augmentation (FAME: rotation, flips, zoom; plus intensity)."""

    hflip_p: float = 0.5
    max_rotation_deg: float = 10.0
    zoom: tuple[float, float] = (0.9, 1.1)
    brightness: float = 0.1  # additive, in z-score units, on the image content only
    contrast: tuple[float, float] = (0.9, 1.1)  # multiplicative
    # Scanner shift: multiplicative speckle-like noise (standard deviation, relative) and a
    # smooth depth-gain ramp (the time-gain compensation another site sets differently).
    speckle: float = 0.0
    depth_gain: float = 0.0  # the ramp's top-to-bottom change, in z-score units
    # Vertical flip: off by default (ultrasound depth has a direction); the FAME paper's
    # recipe (`trainer.run_config.paper_schedule`) turns it on.
    vflip_p: float = 0.0

    def describe(self) -> str:
        text = (
            f"horizontal flip p={self.hflip_p}, rotation ±{self.max_rotation_deg}°, "
            f"zoom {self.zoom[0]}–{self.zoom[1]}, contrast x{self.contrast[0]}–"
            f"{self.contrast[1]}, brightness ±{self.brightness}"
        )
        if self.speckle:
            text += f", speckle x(1 ± N(0, {self.speckle}))"
        if self.depth_gain:
            text += f", depth gain ramp ±{self.depth_gain}"
        if self.vflip_p:
            return text + f", vertical flip p={self.vflip_p}"
        return text + "; no vertical flip"


SITE_SHIFT = AugmentParams(
    max_rotation_deg=15.0,
    zoom=(0.85, 1.15),
    brightness=0.2,
    contrast=(0.75, 1.33),
    speckle=0.15,
    depth_gain=0.4,
)
"""The wider augmentation of multi-site training: geometry, gain, contrast and speckle."""


def augment_batch(
    batch: Tensor,
    generator: torch.Generator,
    params: AugmentParams,
    *,
    intensity_channels: int = 1,
    mask_channels: int = 0,
) -> Tensor:
    """Randomly augment a (N, C, S, S) batch, one transform per sample.

    The same flip / rotation / zoom is applied to every channel of a sample (bilinear for
    images and probability maps, re-binarised at 0.5 for the last `mask_channels`
    channels); the brightness / contrast jitter touches only the first
    `intensity_channels` channels. The letterbox border stays zero.
    """
    n = batch.shape[0]
    dev, dtype = batch.device, batch.dtype

    def uniform(lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=generator).to(dev, dtype)

    angle = uniform(-params.max_rotation_deg, params.max_rotation_deg) * (math.pi / 180.0)
    scale = uniform(*params.zoom)
    flip = torch.where(uniform(0.0, 1.0) < params.hflip_p, -1.0, 1.0).to(dtype)
    # Drawn only when enabled, so runs without it consume the generator as before.
    vflip = (
        torch.where(uniform(0.0, 1.0) < params.vflip_p, -1.0, 1.0).to(dtype)
        if params.vflip_p
        else torch.ones_like(flip)
    )
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # Output pixel -> input location: rotation and 1/zoom, the flip mirrors the x axis.
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, torch.zeros_like(cos)], dim=1),
            torch.stack([sin * flip * vflip, cos * vflip, torch.zeros_like(cos)], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    out = F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if mask_channels:
        out[:, -mask_channels:] = (out[:, -mask_channels:] > 0.5).to(dtype)
    if intensity_channels:
        img = out[:, :intensity_channels]
        content = (img != 0).to(dtype)
        contrast = uniform(*params.contrast).view(n, 1, 1, 1)
        shift = uniform(-params.brightness, params.brightness).view(n, 1, 1, 1)
        out[:, :intensity_channels] = img * contrast + shift * content
        if params.speckle:
            noise = torch.randn(img.shape, generator=generator).to(dev, dtype)
            out[:, :intensity_channels] *= 1.0 + params.speckle * noise * content
        if params.depth_gain:
            rows = torch.linspace(-0.5, 0.5, img.shape[-2], device=dev, dtype=dtype)
            slope = uniform(-params.depth_gain, params.depth_gain).view(n, 1, 1, 1)
            out[:, :intensity_channels] += slope * rows.view(1, 1, -1, 1) * content
    return out
