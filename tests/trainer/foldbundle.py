"""Real bundles of a tiny fold ensemble and of a tiny single MAU-Net, built in seconds.

Both go through the one export (`exporters.fame_bundle.export_fame_bundle`: OOD head,
temperature, ONNX parity check, weights, manifest, verification) with untrained weights and
synthetic preprocessed arrays; no training run is needed to test the contract. The fold
members start from different seeds, so they disagree and the uncertainty is not constant.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from appliance.preprocess import PreprocessParams
from exporters.fame_bundle import BundleIdentity, export_fame_bundle
from trainer.data import ArraySet
from trainer.models import FameNodeNet, FoldEnsemble, LesionClassifier, MAUNet

SIZE = 32


def tiny_fold_net(k: int = 3, seed: int = 0) -> FameNodeNet:
    members = []
    for i in range(k):
        torch.manual_seed(seed + i)
        members.append(MAUNet(base_width=4))
    torch.manual_seed(seed + 100)
    return FameNodeNet(FoldEnsemble(members), LesionClassifier(widths=(4, 8))).eval()


def tiny_single_net(seed: int = 0) -> FameNodeNet:
    torch.manual_seed(seed)
    return FameNodeNet(MAUNet(base_width=4), LesionClassifier(widths=(4, 8))).eval()


def arrays(n: int, seed: int) -> ArraySet:
    """`n` synthetic preprocessed frames: noise with a bright disc (the 'lesion')."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.0, 1.0, (n, SIZE, SIZE)).astype(np.float32)
    masks = np.zeros((n, SIZE, SIZE), np.uint8)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for i in range(n):
        cy, cx, r = rng.integers(8, 24), rng.integers(8, 24), rng.integers(3, 8)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        images[i][disc] += 2.0
        masks[i][disc] = 1
    return ArraySet(
        images, masks, np.arange(n, dtype=np.int64) % 3, tuple(f"{i}" for i in range(n))
    )


def export_tiny(net: FameNodeNet, root: Path, name: str = "tiny-folds") -> Path:
    """`net` as a verified bundle under `root`/bundle."""
    return export_fame_bundle(
        net,
        root / "bundle",
        identity=BundleIdentity(
            name=name,
            version="0.0.1",
            preprocessing=PreprocessParams(size=SIZE).to_dict(),
            mask_threshold=0.5,
            min_lesion_area_px=4,
        ),
        train=arrays(24, seed=1),
        val=arrays(20, seed=2),
        work_dir=root / "work",
        training={"data": "synthetic arrays (tests)"},
        evaluation={},
    )
