"""The FAME dual-stage ensemble classifier: three backbones, a head each, a meta-classifier.

Stage one (the paper's Fig. 2): every backbone (`trainer.models.backbones`: ResNet50V2,
NASNet-A, the MAU-Net encoder) gets its own head, dense (``head_width``; 1024 in the paper),
ReLU, dropout 0.3, dense 3, trained with the backbone to classify on its own
(`stage_one_logits`; softmax at inference). Stage two: with the backbones frozen, a
meta-classifier, dense (``meta_width``), ReLU, dropout, dense 3, classifies the
concatenation of the backbones' pooled features (`features`). The graph the node runs is
backbones -> concatenation -> meta-classifier; the stage-one heads are kept in the weights
(their training and the ablation "each backbone alone vs the fusion" use them) but are not
in the exported graph.

`DualStageClassifier` keeps the classifier protocol of `FameNodeNet`, `trainer.ood` and
`exporters.fame_bundle`: ``in_channels``, ``features(x) -> (N, D)`` (the meta-classifier's
input), ``classify_features(f) -> logits``, ``forward(x) = classify_features(features(x))``.
`backbones` selects any non-empty subset of `BACKBONES`, so a single-backbone classifier
(one backbone, its features, a meta-classifier over them) runs through the same code.

Speed of the node's whole graph (`FameNodeNet`: MAU-Net base width 16 + this classifier,
128 x 128, batch 1, ONNX Runtime on the CPU): ``python -m trainer.dual_stage_bench``, whose
docstring has the figures measured so far.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from trainer.models.backbones import MAUEncoder, NASNetA, PreActResNet
from trainer.models.classifier import CLASSES
from trainer.profiles import EDGE, DualStageProfile

BACKBONES: tuple[str, ...] = ("resnet50v2", "nasnet", "maunet-encoder")


def build_backbone(name: str, profile: DualStageProfile, in_channels: int) -> nn.Module:
    """The backbone `name` at `profile`'s widths; ValueError naming the known ones."""
    if name == "resnet50v2":
        return PreActResNet(profile.resnet, in_channels)
    if name == "nasnet":
        return NASNetA(profile.nasnet, in_channels)
    if name == "maunet-encoder":
        return MAUEncoder(profile.maunet, in_channels)
    raise ValueError(f"unknown backbone {name!r}: choose from {list(BACKBONES)}")


def _feature_count(backbone: nn.Module) -> int:
    features = getattr(backbone, "features", None)
    if not isinstance(features, int):
        raise TypeError(f"{type(backbone).__name__} does not declare its feature count")
    return features


def _dense_head(features: int, width: int, dropout: float, num_classes: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(features, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, num_classes)
    )


class DualStageClassifier(nn.Module):
    """(N, in_channels, S, S) -> logits (N, num_classes) through the backbones' fusion.

    Parameters
    ----------
    profile:
        Widths and depths (`trainer.profiles`: ``EDGE`` or ``PAPER``).
    backbones:
        Names from `BACKBONES`, in the order their features are concatenated; no repeats.
    in_channels:
        2 in the node: [preprocessed image, lesion probability].
    """

    def __init__(
        self,
        profile: DualStageProfile = EDGE,
        backbones: Sequence[str] = BACKBONES,
        in_channels: int = 2,
        num_classes: int = len(CLASSES),
    ) -> None:
        super().__init__()
        names = tuple(backbones)
        if not names or len(set(names)) != len(names) or not set(names) <= set(BACKBONES):
            raise ValueError(
                f"backbones must be a non-empty list of distinct names from {list(BACKBONES)}, "
                f"got {list(names)}"
            )
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        self.profile = profile
        self.backbone_names = names
        self.in_channels = in_channels
        self.num_classes = num_classes
        built = [build_backbone(n, profile, in_channels) for n in names]
        dims = [_feature_count(b) for b in built]
        self.backbones = nn.ModuleList(built)
        self.feature_dims = tuple(dims)
        self.heads = nn.ModuleList(
            _dense_head(d, profile.head_width, profile.dropout, num_classes) for d in dims
        )
        self.meta = _dense_head(sum(dims), profile.meta_width, profile.dropout, num_classes)

    def _check(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"the classifier expects a (N, {self.in_channels}, S, S) tensor "
                f"([image, lesion probability]), got shape {tuple(x.shape)}"
            )

    def backbone_features(self, x: Tensor) -> list[Tensor]:
        """Each backbone's pooled features, in `backbone_names` order."""
        self._check(x)
        return [backbone(x) for backbone in self.backbones]

    def features(self, x: Tensor) -> Tensor:
        """The meta-classifier's input: the backbones' features concatenated, (N, D)."""
        return torch.cat(self.backbone_features(x), dim=1)

    def classify_features(self, features: Tensor) -> Tensor:
        """The meta-classifier's logits from `features`."""
        return self.meta(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.classify_features(self.features(x))

    def stage_one_logits(self, x: Tensor) -> list[Tensor]:
        """Each backbone's own head's logits (stage one), in `backbone_names` order."""
        return [head(f) for head, f in zip(self.heads, self.backbone_features(x), strict=True)]

    def stage_one_modules(self) -> list[nn.Module]:
        """The modules stage one trains (backbones and heads); stage two freezes them."""
        return [*self.backbones, *self.heads]


__all__ = ["BACKBONES", "DualStageClassifier", "build_backbone"]
