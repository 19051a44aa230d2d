"""FoldEnsemble: the FAME paper's three-fold cross-validation ensemble of MAU-Nets.

K MAU-Nets, each trained on K-1 folds of the training split (`trainer.folds`), are run on
the same image; the ensemble's lesion probability is the mean of their sigmoid maps.

``forward(x)`` returns the *logits* of that mean (``torch.logit`` of the mean clamped to
[EPS, 1 - EPS]), so the ensemble drops into `FameNodeNet`'s segmenter slot unchanged:
``sigmoid(forward(x))`` is the mean map (to within the clamp).

``predict(x)`` returns ``(mean_prob, uncertainty)``; ``uncertainty`` (N,) is the folds'
disagreement on each image, in [0, 1]:

    u = sum_px w * 2 * std_k(p_k) / (sum_px w + EPS_AREA),   w = max_k p_k

the per-pixel standard deviation of the K fold probabilities (population std; at most 0.5
for values in [0, 1], hence the factor 2), averaged over the pixels *any* fold calls lesion,
each weighted by the highest fold probability there (a soft union of the predicted lesions).

Why this and not 1 - mean pairwise soft Dice: a normal image, where every fold agrees there
is no lesion, has (near) empty maps, and soft Dice of two empty maps is 0/0: undefined, or,
with a smoothing term, close to 0 (maximal "uncertainty") as soon as the maps hold diffuse
low probabilities. The weighted std is 0 when the folds agree, whether on a lesion or on
none, grows as one fold moves away from the others, and reaches 1 only when folds give 0
and 1 on the same pixels (K = 2; 0.94 for K = 3). It is smooth in the probabilities (no
threshold inside the graph), so the exported ONNX graph reproduces it to float precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from trainer.models.mau_net import MAUNet

EPS = 1e-6  # clamp of the mean probability before the logit: finite logits everywhere
EPS_AREA = 1e-3  # pixels: keeps the ratio defined (and 0) on maps with no lesion at all


def disagreement(probs: Tensor) -> Tensor:
    """Per-image fold disagreement in [0, 1] of fold maps `probs` (K, N, 1, S, S)."""
    if probs.dim() != 5 or probs.shape[0] < 2:
        raise ValueError(
            f"expected (K, N, 1, S, S) fold probabilities with K >= 2, got {tuple(probs.shape)}"
        )
    mean = probs.mean(dim=0)
    std = torch.sqrt(((probs - mean) ** 2).mean(dim=0))
    weight = probs.amax(dim=0)
    num = (weight * 2.0 * std).sum(dim=(1, 2, 3))
    return (num / (weight.sum(dim=(1, 2, 3)) + EPS_AREA)).clamp(0.0, 1.0)


class FoldEnsemble(nn.Module):
    """K MAU-Nets of the same architecture: (N, C, S, S) -> logits of the mean map.

    Parameters
    ----------
    members:
        The fold models, at least 2, all with the same ``in_channels``, ``base_width`` and
        attention switches (the architecture record describes one member).
    """

    def __init__(self, members: Sequence[MAUNet]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"a fold ensemble needs at least 2 MAU-Nets, got {len(members)}")
        first = members[0]
        shape = (first.in_channels, first.base_width)
        switches = (first.channel_attention, first.spatial_attention)
        for i, m in enumerate(members):
            if (m.in_channels, m.base_width) != shape or (
                m.channel_attention,
                m.spatial_attention,
            ) != switches:
                raise ValueError(
                    f"fold {i} is not of fold 0's architecture (in_channels, base_width "
                    f"{shape}, attention {switches}): train every fold with the same settings"
                )
        self.members = nn.ModuleList(members)
        # The attributes FameNodeNet and trainer.weights read off a segmenter.
        self.in_channels = first.in_channels
        self.base_width = first.base_width
        self.channel_attention = first.channel_attention
        self.spatial_attention = first.spatial_attention

    @property
    def k(self) -> int:
        return len(self.members)

    def fold_probs(self, x: Tensor) -> Tensor:
        """Each fold's sigmoid map, stacked: (K, N, 1, S, S)."""
        return torch.stack([torch.sigmoid(m(x)) for m in self.members])

    def predict(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mean probability (N, 1, S, S), fold disagreement (N,) in [0, 1])."""
        probs = self.fold_probs(x)
        return probs.mean(dim=0), disagreement(probs)

    def predict_with_stats(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """`predict` and the first fold model's activation statistics
        (`MAUNet.forward_with_stats`), from the same single pass over the folds."""
        mean, spread, levels = self.predict_with_levels(x)
        first = cast(MAUNet, self.members[0])
        return mean, spread, [first.ood_stats(level) for level in levels]

    def predict_with_levels(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """`predict` and the first fold model's level activations
        (`MAUNet.forward_with_levels`), from the same single pass over the folds."""
        first, levels = cast(MAUNet, self.members[0]).forward_with_levels(x)
        rest = [torch.sigmoid(m(x)) for m in self.members[1:]]
        probs = torch.stack([torch.sigmoid(first), *rest])
        return probs.mean(dim=0), disagreement(probs), levels

    def forward(self, x: Tensor) -> Tensor:
        return torch.logit(self.fold_probs(x).mean(dim=0).clamp(EPS, 1.0 - EPS))


__all__ = ["EPS", "FoldEnsemble", "disagreement"]
