"""The interface every inference backend implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

OOD_OUTPUT = "ood_score"
"""The optional third output: how unlike the training images each image is (trainer.ood)."""

UNCERTAINTY_OUTPUT = "seg_uncertainty"
"""The optional fourth output of a fold-ensemble bundle: how much its fold models disagree on
each image's lesion map, in [0, 1] (trainer.models.fold_ensemble)."""


@dataclass(frozen=True)
class ModelOutputs:
    lesion_prob: NDArray[np.float32]  # (N, S, S)
    class_prob: NDArray[np.float32]  # (N, n_classes)
    ood_score: NDArray[np.float32] | None = None  # (N,), where the model has the output
    seg_uncertainty: NDArray[np.float32] | None = None  # (N,), a fold ensemble's disagreement

    def rows(self, start: int, stop: int) -> ModelOutputs:
        """The outputs of images start..stop-1."""
        return ModelOutputs(
            lesion_prob=self.lesion_prob[start:stop],
            class_prob=self.class_prob[start:stop],
            ood_score=None if self.ood_score is None else self.ood_score[start:stop],
            seg_uncertainty=(
                None if self.seg_uncertainty is None else self.seg_uncertainty[start:stop]
            ),
        )


class InferenceBackend(Protocol):
    """Runs a bundle's model on a batch of preprocessed frames."""

    @property
    def name(self) -> str:
        """Backend name, e.g. "onnxruntime"."""
        ...

    @property
    def device(self) -> str:
        """What really executes the model, e.g. "CPUExecutionProvider"."""
        ...

    def infer(self, batch: NDArray[np.float32]) -> ModelOutputs:
        """`batch` has shape (N, 1, S, S), float32, as `appliance.preprocess` makes it."""
        ...
