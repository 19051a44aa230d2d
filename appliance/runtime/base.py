"""The interface every inference backend implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class ModelOutputs:
    lesion_prob: NDArray[np.float32]  # (N, S, S)
    class_prob: NDArray[np.float32]  # (N, n_classes)


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
