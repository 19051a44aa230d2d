"""FameNodeNet: MAU-Net and the classifier as the single graph shipped in a model bundle.

``forward(image)`` returns ``(lesion_prob, class_prob)``: the sigmoid of the MAU-Net logits
(N, 1, S, S) and the softmax of the classifier's logits (N, 3), the classifier seeing
``[image, lesion_prob]``. This is what `exporters.onnx_export` exports as ``model.onnx``
with input ``image`` and outputs ``lesion_prob`` and ``class_prob``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from trainer.models.classifier import LesionClassifier
from trainer.models.dual_stage import DualStageClassifier
from trainer.models.fold_ensemble import FoldEnsemble
from trainer.models.mau_net import MAUNet

INPUT_NAME = "image"
OUTPUT_NAMES: tuple[str, str] = ("lesion_prob", "class_prob")


class FameNodeNet(nn.Module):
    """Segmentation then classification; both outputs are probabilities."""

    def __init__(
        self,
        segmenter: MAUNet | FoldEnsemble,
        classifier: LesionClassifier | DualStageClassifier,
    ) -> None:
        super().__init__()
        if classifier.in_channels != segmenter.in_channels + 1:
            raise ValueError(
                f"the classifier must take the image channels plus the lesion map "
                f"({segmenter.in_channels + 1} channels), got {classifier.in_channels}"
            )
        self.segmenter = segmenter
        self.classifier = classifier

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        lesion_prob = torch.sigmoid(self.segmenter(image))
        logits = self.classifier(torch.cat([image, lesion_prob], dim=1))
        return lesion_prob, torch.softmax(logits, dim=1)
