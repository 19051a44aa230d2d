"""Distinct ultrasound images for the reliability runs, as many as a run needs.

The real BUSI images (../shared/data/busi, in manifest order, exact copies left out) where
the data set is here, otherwise the phantoms of `appliance.phantom`. The node processes each content
once, so a run of more files than there are images needs new content: the k-th pass over
BUSI re-encodes each image with one pixel's lowest bit flipped (a new sha256, the same
image to the model). Written into a staging folder, to be renamed into the inbox.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from appliance.phantom import PhantomSpec, make_phantom
from tests.e2e.nodeutil import REPO_ROOT

BUSI = REPO_ROOT.parent / "shared" / "data" / "busi"


def busi_images() -> list[Path]:
    """The BUSI images of the manifest that are on disk, one per distinct pixel content
    (the data set holds a few exact copies, which the node rightly answers `duplicate`);
    [] without the data set."""
    manifest = BUSI / "manifest.csv"
    if not manifest.is_file():
        return []
    seen: set[str] = set()
    paths = []
    with manifest.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row["pixel_sha256"] not in seen and (BUSI / row["image"]).is_file():
                seen.add(row["pixel_sha256"])
                paths.append(BUSI / row["image"])
    return paths


@dataclass
class Inputs:
    """`make(i)` writes the i-th distinct input into `staging` and returns its path."""

    staging: Path
    busi: list[Path]

    @classmethod
    def create(cls, staging: Path) -> Inputs:
        staging.mkdir(parents=True, exist_ok=True)
        return cls(staging, busi_images())

    @property
    def source(self) -> str:
        if self.busi:
            n = len(self.busi)
            return f"BUSI ({n} distinct images; repeats re-encoded with one pixel changed)"
        return "appliance.phantom PNGs, 360 x 480 (BUSI not present)"

    def make(self, i: int) -> Path:
        if i < 0:
            raise ValueError(f"input index must be >= 0, got {i}")
        out = self.staging / f"in_{i:06d}.png"
        if not self.busi:
            spec = PhantomSpec(height=360, width=480, seed=10_000 + i)
            cv2.imwrite(str(out), make_phantom(spec).image)
            return out
        src = self.busi[i % len(self.busi)]
        rounds = i // len(self.busi)
        if rounds == 0:
            out.write_bytes(src.read_bytes())
            return out
        image = cv2.imread(str(src), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise OSError(f"cv2 could not read the BUSI image {src}")
        flat = image.reshape(-1)
        # A different pixel each round: pass k flips the lowest bit of pixel k.
        flat[(rounds * 7919) % flat.size] ^= np.uint8(1)
        if not cv2.imwrite(str(out), image):
            raise OSError(f"cv2 could not write {out}")
        return out
