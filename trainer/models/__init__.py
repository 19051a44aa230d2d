"""Network definitions: MAU-Net (segmentation), the lesion classifier, and their combination."""

from trainer.models.classifier import CLASSES, LesionClassifier
from trainer.models.combined import INPUT_NAME, OUTPUT_NAMES, FameNodeNet
from trainer.models.dual_stage import BACKBONES, DualStageClassifier
from trainer.models.fold_ensemble import FoldEnsemble
from trainer.models.mau_net import ChannelAttention, DualAttention, MAUNet, SpatialAttention
from trainer.models.probe import PROBE_KIND, LayerProbe

__all__ = [
    "BACKBONES",
    "CLASSES",
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "PROBE_KIND",
    "ChannelAttention",
    "DualAttention",
    "DualStageClassifier",
    "FameNodeNet",
    "FoldEnsemble",
    "LayerProbe",
    "LesionClassifier",
    "MAUNet",
    "SpatialAttention",
]
