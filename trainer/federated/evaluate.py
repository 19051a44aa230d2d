"""Dice and AUC of a model on a node's held-out arrays (the figures a node reports).

The same postprocessing as inference (`appliance.postprocess.clean_mask` at the bundle's
threshold and minimum area) and the same metrics as training (`trainer.loops`): Dice is
the mean over held-out images with a lesion, AUC the macro one-vs-rest AUC (malignant vs
rest on benign / malignant data). A figure that is undefined on these cases (no lesion,
one class only) is None, and is then not reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from trainer.data import ArraySet
from trainer.loops import classification_metrics, segmentation_metrics
from trainer.models import FameNodeNet


@dataclass(frozen=True)
class HeldoutScore:
    n: int
    dice: float | None
    auc: float | None

    def score(self) -> float | None:
        """One number to compare two models by: the mean of the defined figures."""
        figures = [f for f in (self.dice, self.auc) if f is not None]
        return float(np.mean(figures)) if figures else None


def evaluate_heldout(
    net: FameNodeNet,
    heldout: ArraySet,
    threshold: float = 0.5,
    min_area_px: float = 0.0,
    batch_size: int = 16,
) -> HeldoutScore:
    if len(heldout) == 0:
        return HeldoutScore(0, None, None)
    net.eval()
    probs: list[np.ndarray] = []
    classes: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, len(heldout), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(heldout.images[start : start + batch_size]))
            lesion, cls = net(x[:, None])
            probs.append(lesion[:, 0].numpy())
            classes.append(cls.numpy())
    seg = segmentation_metrics(np.concatenate(probs), heldout.masks, threshold, min_area_px)
    cls_figures = classification_metrics(np.concatenate(classes), heldout.labels)
    return HeldoutScore(
        n=len(heldout), dice=_defined(seg["dice"]), auc=_defined(cls_figures.get("macro_auc"))
    )


def _defined(value: object) -> float | None:
    if value is None:
        return None
    number = float(value)  # type: ignore[arg-type]
    return None if math.isnan(number) else number
