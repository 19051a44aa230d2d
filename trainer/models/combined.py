"""FameNodeNet: MAU-Net and the classifier as the single graph shipped in a model bundle.

``forward(image)`` returns ``(lesion_prob, class_prob)``: the sigmoid of the MAU-Net logits
(N, 1, S, S) and the softmax of the classifier's logits (N, 3), the classifier seeing
``[image, lesion_prob]``. This is what `exporters.onnx_export` exports as ``model.onnx``
with input ``image`` and outputs ``lesion_prob`` and ``class_prob``.

With a `LayerProbe` (`trainer.models.probe`) the class logits are the probe's, over every
layer's features (`graph_pass`), and the classifier's own last layer is unused; a probe with
``lesion_means`` also reads the MAU-Net's level activations averaged inside the lesion map
(`LesionMeans`), which `graph_pass` then appends to the layers.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from trainer.models.classifier import LesionClassifier
from trainer.models.dual_stage import DualStageClassifier
from trainer.models.fold_ensemble import EPS, FoldEnsemble
from trainer.models.mau_net import MAUNet
from trainer.models.probe import LayerProbe, LesionMeans

INPUT_NAME = "image"
OUTPUT_NAMES: tuple[str, str] = ("lesion_prob", "class_prob")


class FameNodeNet(nn.Module):
    """Segmentation then classification; both outputs are probabilities."""

    def __init__(
        self,
        segmenter: MAUNet | FoldEnsemble,
        classifier: LesionClassifier | DualStageClassifier,
        probe: LayerProbe | None = None,
    ) -> None:
        super().__init__()
        if classifier.in_channels != segmenter.in_channels + 1:
            raise ValueError(
                f"the classifier must take the image channels plus the lesion map "
                f"({segmenter.in_channels + 1} channels), got {classifier.in_channels}"
            )
        self.segmenter = segmenter
        self.classifier = classifier
        self.probe = probe
        # No parameters (the state dict is unchanged); its own scope in the ONNX graph.
        self.lesion_means = LesionMeans()

    @property
    def reads_lesion_means(self) -> bool:
        """Whether the class logits need `LesionMeans` (a probe fitted with them)."""
        return self.probe is not None and self.probe.lesion_means

    def graph_pass(
        self, image: Tensor, lesion_means: bool | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None, list[Tensor]]:
        """One pass of the exported graph: (lesion_prob, the classifier's pooled features,
        the folds' disagreement or None, every layer's features: the segmenter's activation
        statistics (for a fold ensemble, its first fold's), then the classifier's features,
        then, with `lesion_means` (default: when the probe reads them), the segmenter's
        level activations averaged inside the lesion map). The out-of-distribution head
        scores the first `trainer.ood.LAYER_NAMES` of them."""
        if lesion_means is None:
            lesion_means = self.reads_lesion_means
        _, lesion_prob, features, uncertainty, layers = self._full_pass(image, lesion_means)
        return lesion_prob, features, uncertainty, layers

    def class_logits(self, features: Tensor, layers: list[Tensor]) -> Tensor:
        """The class logits from `graph_pass`'s features: the probe's where there is one."""
        if self.probe is not None:
            return self.probe(layers)
        return self.classifier.classify_features(features)

    def logits(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """(lesion logits (N, 1, S, S), class logits (N, classes)): what training's losses
        take (`forward` returns their probabilities)."""
        if self.probe is None:
            seg_logits = self.segmenter(image)
            return seg_logits, self.classifier(torch.cat([image, torch.sigmoid(seg_logits)], 1))
        seg_logits, _, features, _, layers = self._full_pass(image, self.reads_lesion_means)
        return seg_logits, self.class_logits(features, layers)

    def _full_pass(
        self, image: Tensor, lesion_means: bool
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, list[Tensor]]:
        # (lesion logits, lesion_prob, classifier features, disagreement, layers). A fold
        # ensemble's logits are those of its mean map, as `FoldEnsemble.forward` gives them.
        segmenter = self.segmenter
        uncertainty: Tensor | None = None
        if isinstance(segmenter, FoldEnsemble):
            lesion_prob, uncertainty, levels = segmenter.predict_with_levels(image)
            seg_logits = torch.logit(lesion_prob.clamp(EPS, 1.0 - EPS))
            measured = cast(MAUNet, segmenter.members[0])  # the levels are its first fold's
        else:
            seg_logits, levels = segmenter.forward_with_levels(image)
            lesion_prob = torch.sigmoid(seg_logits)
            measured = segmenter
        stats = [measured.ood_stats(level) for level in levels]
        features = self.classifier.features(torch.cat([image, lesion_prob], dim=1))
        layers = [*stats, features]
        if lesion_means:
            layers += self.lesion_means(levels, lesion_prob)
        return seg_logits, lesion_prob, features, uncertainty, layers

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        if self.probe is None:
            seg_logits, logits = self.logits(image)
            return torch.sigmoid(seg_logits), torch.softmax(logits, dim=1)
        lesion_prob, features, _, layers = self.graph_pass(image)
        return lesion_prob, torch.softmax(self.class_logits(features, layers), dim=1)
