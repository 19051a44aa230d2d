"""Training losses: Dice + BCE for segmentation, class-weighted cross-entropy for classes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def soft_dice_loss(logits: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """1 - soft Dice per image, averaged over the batch (FAME's Dice loss).

    The `smooth` term keeps images with an empty mask (normal cases) well defined: their
    loss is then driven to 0 by predicting no lesion.
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")
    prob = torch.sigmoid(logits).flatten(1)
    tgt = target.flatten(1)
    inter = (prob * tgt).sum(dim=1)
    dice = (2.0 * inter + smooth) / (prob.sum(dim=1) + tgt.sum(dim=1) + smooth)
    return (1.0 - dice).mean()


def dice_bce_loss(
    logits: Tensor, target: Tensor, *, bce_weight: float = 1.0, dice_weight: float = 1.0
) -> Tensor:
    """Soft Dice loss plus pixel-wise binary cross-entropy on the logits."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    return dice_weight * soft_dice_loss(logits, target) + bce_weight * bce


def inverse_frequency_weights(counts: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
    """Class weights ``n / (k * n_c)``: 1 for balanced classes, larger for minorities."""
    if not counts or min(counts) < 1:
        raise ValueError(f"every class needs at least one training example, got counts {counts}")
    total = float(sum(counts))
    return torch.tensor([total / (len(counts) * c) for c in counts], dtype=dtype)
