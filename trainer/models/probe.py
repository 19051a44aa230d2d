"""The layer probe: class logits from what every layer of the network says about an image.

The lesion classifier (`LesionClassifier`, `DualStageClassifier`) learns from the class
labels alone, about a thousand images; the MAU-Net before it learnt from every pixel of
their masks. `LayerProbe` classifies on both: one linear layer over the activation
statistics of the MAU-Net's four encoder levels and its bottleneck (per channel the spatial
mean and standard deviation, `MAUNet.forward_with_stats`) and the classifier's pooled
features, the six layers `trainer.ood` scores, each standardised by its training split's
mean and standard deviation. The graph computes those features anyway for the
out-of-distribution score, so the probe costs one matrix product.

Where a `FameNodeNet` has a probe, its class logits are the probe's and the classifier's own
last layer is unused (the federation's fine-tuning freezes what the loss does not reach,
`trainer.federated.local_train`). Fitted by `trainer.probe`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from trainer.models.classifier import CLASSES

PROBE_KIND = "layer-probe"


class LayerProbe(nn.Module):
    """(list of per-layer features (N, D_l)) -> class logits (N, num_classes).

    ``offset`` and ``scale`` (D,) standardise the concatenated features (fitted on the train
    split and stored with the weights); ``linear`` classifies them."""

    offset: Tensor
    scale: Tensor

    def __init__(self, widths: tuple[int, ...], num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be a non-empty list of positive ints, got {widths}")
        self.widths = tuple(int(w) for w in widths)
        self.num_classes = int(num_classes)
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


__all__ = ["PROBE_KIND", "LayerProbe"]
