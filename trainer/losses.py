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


def lesion_presence_loss(logits: Tensor, target: Tensor, top_fraction: float = 0.005) -> Tensor:
    """Binary cross-entropy of each image's "is there a lesion" logit against its mask.

    The logit is the mean of the image's highest `top_fraction` of pixel logits (at least
    one pixel): on a lesion-free image it is the most confident false lesion. The soft Dice
    loss of an empty mask, ``1 - 1 / (S + 1)`` for a predicted area S, is flat once any blob
    is predicted (its gradient falls as ``1 / (S + 1)^2``), and the pixel-wise BCE of a
    100-pixel blob is diluted over the whole frame; this term stays steep on the blob's
    strongest pixels, so normal images teach the segmenter to draw nothing.
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    flat = logits.flatten(1)
    k = max(1, round(top_fraction * flat.shape[1]))
    image_logit = flat.topk(k, dim=1).values.mean(dim=1)
    present = (target.flatten(1).amax(dim=1) > 0).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(image_logit, present)


def dice_bce_loss(
    logits: Tensor,
    target: Tensor,
    *,
    bce_weight: float = 1.0,
    dice_weight: float = 1.0,
    presence_weight: float = 0.0,
) -> Tensor:
    """Soft Dice loss plus pixel-wise binary cross-entropy on the logits, plus
    `presence_weight` times `lesion_presence_loss` where that is above 0."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    loss = dice_weight * soft_dice_loss(logits, target) + bce_weight * bce
    if presence_weight > 0:
        loss = loss + presence_weight * lesion_presence_loss(logits, target)
    return loss


def inverse_frequency_weights(counts: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
    """Class weights ``n / (k * n_c)``: 1 for balanced classes, larger for minorities."""
    if not counts or min(counts) < 1:
        raise ValueError(f"every class needs at least one training example, got counts {counts}")
    total = float(sum(counts))
    return torch.tensor([total / (len(counts) * c) for c in counts], dtype=dtype)
