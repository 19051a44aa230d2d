"""The layer probe: class logits from what every layer of the network says about an image.

The lesion classifier (`LesionClassifier`, `DualStageClassifier`) learns from the class
labels alone, about a thousand images; the MAU-Net before it learnt from every pixel of
their masks. `LayerProbe` classifies on both: one linear layer over the activation
statistics of the MAU-Net's four encoder levels and its bottleneck (per channel the spatial
mean and standard deviation, `MAUNet.forward_with_stats`) and the classifier's pooled
features, the six layers `trainer.ood` scores, each standardised by its training split's
mean and standard deviation. The graph computes those features anyway for the
out-of-distribution score, so the probe costs one matrix product.

A probe fitted with ``lesion_means`` also reads, for each of the MAU-Net's five levels, the
per-channel mean of its activations *inside the predicted lesion* (`LesionMeans`: weighted
by the lesion probability, down-sampled to the level). The whole-image statistics mix the
lesion with the tissue around it; these describe the lesion alone (docs/RESULTS.md, the
paragraph on 0.2.6). They are the last five inputs, after the six layers above.

Where a `FameNodeNet` has a probe, its class logits are the probe's and the classifier's own
last layer is unused (the federation's fine-tuning freezes what the loss does not reach,
`trainer.federated.local_train`). Fitted by `trainer.probe`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.models.classifier import CLASSES
from trainer.models.mau_net import LEVEL_SCALES

PROBE_KIND = "layer-probe"
LESION_EPS = 1e-3  # added to each level's lesion weight: an empty map gives means near 0


class LesionMeans(nn.Module):
    """(the MAU-Net's level activations, lesion probability (N, 1, S, S)) -> per level the
    per-channel mean of the activations weighted by the lesion probability, (N, C_l).

    The probability is averaged down to each level's grid (`LEVEL_SCALES`, as the levels'
    max-pooling down-samples the image); the weighted sum is divided by the weights' sum
    plus `LESION_EPS`. No parameters; a module so that its ops have a scope of their own,
    which the FP16 export keeps in float32 (sums over up to S x S pixels)."""

    def __init__(self, scales: tuple[int, ...] = LEVEL_SCALES) -> None:
        super().__init__()
        self.scales = tuple(int(k) for k in scales)

    def forward(self, levels: list[Tensor], lesion_prob: Tensor) -> list[Tensor]:
        if len(levels) != len(self.scales):
            raise ValueError(f"{len(levels)} levels, expected {len(self.scales)}")
        out = []
        for level, k in zip(levels, self.scales, strict=True):
            weight = F.avg_pool2d(lesion_prob, k) if k > 1 else lesion_prob
            total = weight.sum(dim=(2, 3)) + LESION_EPS
            out.append((level * weight).sum(dim=(2, 3)) / total)
        return out


class LayerProbe(nn.Module):
    """(list of per-layer features (N, D_l)) -> class logits (N, num_classes).

    ``offset`` and ``scale`` (D,) standardise the concatenated features (fitted on the train
    split and stored with the weights); ``linear`` classifies them. With ``lesion_means`` the
    last `len(LEVEL_SCALES)` inputs are `LesionMeans`' (the net computes them for it)."""

    offset: Tensor
    scale: Tensor

    def __init__(
        self,
        widths: tuple[int, ...],
        num_classes: int = len(CLASSES),
        *,
        lesion_means: bool = False,
    ) -> None:
        super().__init__()
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be a non-empty list of positive ints, got {widths}")
        if lesion_means and len(widths) <= len(LEVEL_SCALES):
            raise ValueError(
                f"a probe with lesion means reads {len(LEVEL_SCALES)} of them after the other "
                f"layers, got only {len(widths)} widths"
            )
        self.widths = tuple(int(w) for w in widths)
        self.num_classes = int(num_classes)
        self.lesion_means = bool(lesion_means)
        total = sum(self.widths)
        self.register_buffer("offset", torch.zeros(total))
        self.register_buffer("scale", torch.ones(total))
        self.linear = nn.Linear(total, num_classes)

    def forward(self, layers: list[Tensor]) -> Tensor:
        got = tuple(int(f.shape[1]) for f in layers)
        if got != self.widths:
            raise ValueError(
                f"the probe classifies layers of widths {list(self.widths)}, got {list(got)}"
            )
        x = torch.cat(layers, dim=1)
        return self.linear((x - self.offset) / self.scale)


__all__ = ["LESION_EPS", "PROBE_KIND", "LayerProbe", "LesionMeans"]
