"""The model families, once: each contract (ONNX parity and FP16 in `tests/exporters`,
shapes / training step / safetensors round trip in `tests/trainer/test_model_contracts.py`)
is subclassed with every family as a mixin, so a new family is added in one place.

A family says how to build a tiny instance (`build`), what it takes (`in_channels`,
`input_name`), what it returns (`output_names`, `output_shapes` for a batch `n` of side
`s`), and a training loss on a batch with fixed targets (`loss`), which one optimiser step
must lower.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.models import FameNodeNet, LesionClassifier, MAUNet


def _targets(n: int, s: int) -> tuple[Tensor, Tensor]:
    """Fixed lesion masks (a square per image) and class labels for a batch."""
    masks = torch.zeros(n, 1, s, s)
    masks[:, :, s // 4 : s // 2, s // 4 : s // 2] = 1.0
    return masks, torch.arange(n) % 3


class MAUNetFamily:
    in_channels = 1
    input_name = "image"
    output_names: tuple[str, ...] = ("lesion_logits",)

    @classmethod
    def build(cls) -> nn.Module:
        return MAUNet(base_width=4)

    @classmethod
    def output_shapes(cls, n: int, s: int) -> tuple[tuple[int, ...], ...]:
        return ((n, 1, s, s),)

    @classmethod
    def loss(cls, model: nn.Module, x: Tensor) -> Tensor:
        masks, _ = _targets(x.shape[0], x.shape[-1])
        return F.binary_cross_entropy_with_logits(model(x), masks)


class ClassifierFamily:
    in_channels = 2
    input_name = "image_and_lesion"
    output_names: tuple[str, ...] = ("class_logits",)

    @classmethod
    def build(cls) -> nn.Module:
        return LesionClassifier(in_channels=2, widths=(4, 8, 8))

    @classmethod
    def output_shapes(cls, n: int, s: int) -> tuple[tuple[int, ...], ...]:
        return ((n, 3),)

    @classmethod
    def loss(cls, model: nn.Module, x: Tensor) -> Tensor:
        _, labels = _targets(x.shape[0], x.shape[-1])
        return F.cross_entropy(model(x), labels)


class CombinedFamily:
    in_channels = 1
    input_name = "image"
    output_names: tuple[str, ...] = ("lesion_prob", "class_prob")

    @classmethod
    def build(cls) -> nn.Module:
        return FameNodeNet(MAUNet(base_width=4), LesionClassifier(widths=(4, 8, 8)))

    @classmethod
    def output_shapes(cls, n: int, s: int) -> tuple[tuple[int, ...], ...]:
        return ((n, 1, s, s), (n, 3))

    @classmethod
    def loss(cls, model: nn.Module, x: Tensor) -> Tensor:
        masks, labels = _targets(x.shape[0], x.shape[-1])
        lesion_prob, class_prob = model(x)
        seg = F.binary_cross_entropy(lesion_prob.clamp(1e-6, 1 - 1e-6), masks)
        return seg + F.nll_loss(torch.log(class_prob.clamp_min(1e-8)), labels)


# Every family, for the contracts that run over all of them.
ALL_FAMILIES: tuple[type, ...] = (MAUNetFamily, ClassifierFamily, CombinedFamily)
