"""The first image classifier: a small pre-activation residual CNN (ResNetV2 style).

Input: two channels, the preprocessed frame and the lesion probability map that the frozen
MAU-Net predicts for it, so the classifier is told where the lesion is. Output: logits for
`CLASSES`. GroupNorm instead of BatchNorm for the reasons given in `trainer.models.mau_net`.
A later version adds the paper's ResNet50V2 / NASNet ensemble and meta-classifier.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from trainer.models.mau_net import conv3x3, group_norm

CLASSES: tuple[str, ...] = ("normal", "benign", "malignant")


class PreActBlock(nn.Module):
    """Pre-activation residual block: (GN, ReLU, conv3x3) x 2 plus a (projected) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.norm2 = group_norm(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.act = nn.ReLU()
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.act(self.norm1(x))
        # ResNetV2: a projection shortcut takes the pre-activated input, identity takes x.
        residual = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.act(self.norm2(out)))
        return out + residual


class LesionClassifier(nn.Module):
    """(N, in_channels, S, S) -> class logits (N, num_classes).

    Parameters
    ----------
    in_channels:
        2 by default: [preprocessed image, lesion probability].
    widths:
        Channels of the four stages; the first keeps the stem's resolution (S/2), each
        later stage halves it.
    num_classes:
        Output classes, in the order of `CLASSES` by default.
    dropout:
        Dropout before the linear layer.
    """

    def __init__(
        self,
        in_channels: int = 2,
        widths: Sequence[int] = (32, 64, 128, 256),
        num_classes: int = len(CLASSES),
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        if len(widths) < 1 or min(widths) < 1:
            raise ValueError(f"widths must be a non-empty list of positive ints, got {widths}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels = in_channels
        self.widths = tuple(widths)  # recorded with the weights (trainer.weights)
        # Stride-2 stem: the classifier does not need full resolution, and it quarters the
        # cost on the CPU-only nodes.
        self.stem = nn.Conv2d(in_channels, widths[0], 3, stride=2, padding=1, bias=False)
        blocks: list[nn.Module] = []
        previous = widths[0]
        for index, width in enumerate(widths):
            blocks.append(PreActBlock(previous, width, stride=1 if index == 0 else 2))
            previous = width
        self.blocks = nn.Sequential(*blocks)
        self.final_norm = group_norm(previous)
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(previous, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """The pooled features the last layer classifies, (N, widths[-1])."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"the classifier expects a (N, {self.in_channels}, S, S) tensor "
                f"([image, lesion probability]), got shape {tuple(x.shape)}"
            )
        x = self.blocks(self.stem(x))
        x = self.act(self.final_norm(x))
        return torch.mean(x, dim=(2, 3))

    def classify_features(self, features: Tensor) -> Tensor:
        """Class logits from `features` (the classifier protocol of `FameNodeNet`)."""
        return self.fc(self.dropout(features))

    def forward(self, x: Tensor) -> Tensor:
        return self.classify_features(self.features(x))
