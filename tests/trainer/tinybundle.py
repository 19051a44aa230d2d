"""A real bundle with torch weights, OOD head and calibration, trained in seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.trainer.test_train import write_tiny_busi
from trainer.run_config import TrainConfig
from trainer.train import run


def tiny_config(manifest: Path, root: Path, **changes: Any) -> TrainConfig:
    """The tests' training settings: 32 px, the narrowest widths, batch 4, one epoch per
    stage, writing below `root`; `changes` override any of them."""
    settings: dict[str, Any] = {
        "out": root / "bundle",
        "work_dir": root / "work",
        "cache_dir": root / "cache",
        "size": 32,
        "base_width": 4,
        "cls_widths": (4, 8),
        "batch_size": 4,
        "epochs_seg": 1,
        "epochs_cls": 1,
    }
    return TrainConfig(manifest=manifest, **{**settings, **changes})


def make_tiny_bundle(root: Path) -> Path:
    """Train one epoch per stage at 32 px on a 12-image BUSI-like folder; the bundle path."""
    return run(tiny_config(write_tiny_busi(root / "busi", per_class=4), root))
