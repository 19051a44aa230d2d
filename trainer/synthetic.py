"""ACGAN images of the minority classes added to each epoch of a classifier stage (the
``--acgan`` option): `trainer.loops.train_classifier` and `trainer.dual_stage_train`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from trainer.data import ArraySet
from trainer.models import CLASSES
from trainer.models.acgan import ACGANGenerator
from trainer.run_config import TrainConfig


class SyntheticImages:
    """ACGAN images of the minority classes added to each epoch of stage 2 (`cfg.acgan`).

    Each epoch draws `per_class` new images (noise seeded by the run's seed and the epoch,
    so a resumed run draws the same ones) and gives the classifier [image, the frozen
    segmenter's lesion probability of that synthetic image], like every real image.
    """

    def __init__(
        self,
        generator: ACGANGenerator | None,
        per_class: list[int],
        size: int,
        seed: int,
        with_map: Callable[[NDArray[np.float32]], Tensor],
        source: dict[str, Any] | None = None,
    ) -> None:
        self.generator, self.per_class, self.size, self.seed = generator, per_class, size, seed
        self.with_map, self.source = with_map, source
        self.total = sum(per_class) if generator is not None else 0

    @classmethod
    def load(
        cls, cfg: TrainConfig, train: ArraySet, with_map: Callable[[NDArray[np.float32]], Tensor]
    ) -> SyntheticImages:
        if cfg.acgan is None:
            return cls(None, [0] * len(CLASSES), cfg.size, cfg.seed, with_map)
        from trainer.acgan import balance_counts, check_same_data, load_generator

        generator, summary = load_generator(cfg.acgan)
        check_same_data(summary, cfg.manifests)
        per_class = balance_counts(train.class_counts())
        source = {
            "acgan_size": summary["settings"]["size"],
            "acgan_epochs": summary["epochs_run"],
            "acgan_manifests": summary["manifests"],
        }
        return cls(generator, per_class, cfg.size, cfg.seed, with_map, source)

    def epoch(self, epoch: int, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """This epoch's training inputs and labels: the real ones, then the synthetic."""
        if self.generator is None or not self.total:
            return x, y
        from trainer.acgan import synthesize

        images, labels = synthesize(
            self.generator, self.per_class, self.size, seed=self.seed * 100_003 + epoch
        )
        return torch.cat([x, self.with_map(images[:, 0].numpy())]), torch.cat([y, labels])

    def describe(self) -> dict[str, Any] | None:
        """What the log and the bundle record: how many synthetic images per class."""
        if self.generator is None:
            return None
        return {
            "per_class_per_epoch": dict(zip(CLASSES, self.per_class, strict=True)),
            **(self.source or {}),
        }


__all__ = ["SyntheticImages"]
