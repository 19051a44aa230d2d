"""The exportable model families, once: each export contract (ONNX parity, FP16) is
subclassed with every family as a mixin, so a new family is added in one place."""

from __future__ import annotations

from torch import nn

from trainer.models import FameNodeNet, LesionClassifier, MAUNet


class MAUNetFamily:
    in_channels = 1
    input_name = "image"
    output_names: tuple[str, ...] = ("lesion_logits",)

    @classmethod
    def build(cls) -> nn.Module:
        return MAUNet(base_width=4)


class ClassifierFamily:
    in_channels = 2
    input_name = "image_and_lesion"
    output_names: tuple[str, ...] = ("class_logits",)

    @classmethod
    def build(cls) -> nn.Module:
        return LesionClassifier(in_channels=2, widths=(4, 8, 8))


class CombinedFamily:
    in_channels = 1
    input_name = "image"
    output_names: tuple[str, ...] = ("lesion_prob", "class_prob")

    @classmethod
    def build(cls) -> nn.Module:
        return FameNodeNet(MAUNet(base_width=4), LesionClassifier(widths=(4, 8, 8)))
