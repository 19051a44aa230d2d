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

from trainer.models import DualStageClassifier, FameNodeNet, FoldEnsemble, LesionClassifier, MAUNet
from trainer.profiles import DualStageProfile, MAUEncoderSpec, NASNetSpec, ResNetV2Spec


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


# The dual-stage ensemble at test widths: every backbone, every cell kind, a handful of
# channels (36 features in all, so a few dozen images fit the OOD head).
TINY_DUAL_STAGE = DualStageProfile(
    name="tiny",
    resnet=ResNetV2Spec(stem_width=4, depths=(1, 1), widths=(2, 4), expansion=2),
    nasnet=NASNetSpec(stem_filters=4, cells=1, penultimate_filters=48, filter_multiplier=1),
    maunet=MAUEncoderSpec(base_width=1),
    head_width=8,
    meta_width=8,
)


def _dual_stage_loss(cls: DualStageClassifier, x: Tensor, labels: Tensor) -> Tensor:
    """Meta-classifier plus every stage-one head: all parameters get a gradient."""
    losses = [F.cross_entropy(z, labels) for z in cls.stage_one_logits(x)]
    return F.cross_entropy(cls(x), labels) + torch.stack(losses).sum()


class DualStageFamily(ClassifierFamily):
    @classmethod
    def build(cls) -> nn.Module:
        return DualStageClassifier(TINY_DUAL_STAGE)

    @classmethod
    def loss(cls, model: nn.Module, x: Tensor) -> Tensor:
        _, labels = _targets(x.shape[0], x.shape[-1])
        if not isinstance(model, DualStageClassifier):
            raise TypeError(f"expected a DualStageClassifier, got {type(model).__name__}")
        return _dual_stage_loss(model, x, labels)


class SingleBackboneFamily(DualStageFamily):
    """The ablation's "one backbone alone": NASNet-A only, through the same classifier."""

    @classmethod
    def build(cls) -> nn.Module:
        return DualStageClassifier(TINY_DUAL_STAGE, backbones=("nasnet",))


class CombinedDualStageFamily(CombinedFamily):
    @classmethod
    def build(cls) -> nn.Module:
        return FameNodeNet(MAUNet(base_width=4), DualStageClassifier(TINY_DUAL_STAGE))

    @classmethod
    def loss(cls, model: nn.Module, x: Tensor) -> Tensor:
        if not isinstance(model, FameNodeNet) or not isinstance(
            model.classifier, DualStageClassifier
        ):
            raise TypeError(f"expected a FameNodeNet with a dual-stage classifier: {model}")
        masks, labels = _targets(x.shape[0], x.shape[-1])
        lesion_prob = torch.sigmoid(model.segmenter(x))
        seg = F.binary_cross_entropy(lesion_prob.clamp(1e-6, 1 - 1e-6), masks)
        cls_in = torch.cat([x, lesion_prob], dim=1)
        return seg + _dual_stage_loss(model.classifier, cls_in, labels)


class FoldEnsembleFamily:
    """The exported graph of a fold-ensemble bundle (`trainer.ood.FameNodeNetWithOOD` over a
    `FameNodeNet` whose segmenter is a `FoldEnsemble` of 3 MAU-Nets): 4 outputs, the last the
    folds' disagreement. The OOD head's statistics are fixed, not fitted (buffers only)."""

    in_channels = 1
    input_name = "image"
    output_names: tuple[str, ...] = ("lesion_prob", "class_prob", "ood_score", "seg_uncertainty")

    @classmethod
    def build(cls) -> nn.Module:
        import numpy as np

        from trainer.ood import FameNodeNetWithOOD, OODStats

        net = FameNodeNet(
            FoldEnsemble([MAUNet(base_width=4) for _ in range(3)]), LesionClassifier(widths=(4, 8))
        )
        stats = OODStats(means=np.eye(3, 8), precision=np.eye(8))
        return FameNodeNetWithOOD(net, stats, temperature=1.5)

    @classmethod
    def output_shapes(cls, n: int, s: int) -> tuple[tuple[int, ...], ...]:
        return ((n, 1, s, s), (n, 3), (n,), (n,))

    @classmethod
    def loss(cls, model: nn.Module, x: Tensor) -> Tensor:
        masks, labels = _targets(x.shape[0], x.shape[-1])
        lesion_prob, class_prob, _, _ = model(x)
        seg = F.binary_cross_entropy(lesion_prob.clamp(1e-6, 1 - 1e-6), masks)
        return seg + F.nll_loss(torch.log(class_prob.clamp_min(1e-8)), labels)


class LayerProbeFamily:
    """The exported graph of a layer-probe bundle (`trainer.probe`): `FameNodeNetWithOOD`
    over a `FameNodeNet` whose class logits are its `LayerProbe`'s, over the layered OOD
    head's six layers. The classifier's own last layer is unused there, and frozen as the
    federation's fine-tuning freezes it (`trainer.federated.local_train`)."""

    in_channels = 1
    input_name = "image"
    output_names: tuple[str, ...] = ("lesion_prob", "class_prob", "ood_score")

    @classmethod
    def build(cls) -> nn.Module:
        import numpy as np

        from trainer.models import LayerProbe
        from trainer.ood import FameNodeNetWithOOD, LayeredOODStats, OODStats, ood_features

        net = FameNodeNet(MAUNet(base_width=4), LesionClassifier(widths=(4, 8)))
        widths = [f.shape[1] for f in ood_features(net, np.zeros((1, 32, 32), np.float32))]
        net.probe = LayerProbe(tuple(widths))
        net.classifier.fc.requires_grad_(False)
        stats = LayeredOODStats(
            layers=tuple(OODStats(means=np.eye(3, w), precision=np.eye(w)) for w in widths),
            scales=tuple(1.0 for _ in widths),
        )
        return FameNodeNetWithOOD(net, stats, temperature=1.5)

    @classmethod
    def output_shapes(cls, n: int, s: int) -> tuple[tuple[int, ...], ...]:
        return ((n, 1, s, s), (n, 3), (n,))

    @classmethod
    def loss(cls, model: nn.Module, x: Tensor) -> Tensor:
        masks, labels = _targets(x.shape[0], x.shape[-1])
        lesion_prob, class_prob, _ = model(x)
        seg = F.binary_cross_entropy(lesion_prob.clamp(1e-6, 1 - 1e-6), masks)
        return seg + F.nll_loss(torch.log(class_prob.clamp_min(1e-8)), labels)


class LesionProbeFamily(LayerProbeFamily):
    """A layer-probe graph whose probe also reads the MAU-Net's five levels averaged inside
    the lesion map (`trainer.models.probe.LesionMeans`, ``trainer.probe``'s default): eleven
    inputs, the OOD head still over the first six."""

    @classmethod
    def build(cls) -> nn.Module:
        import numpy as np

        from trainer.models import LayerProbe
        from trainer.ood import FameNodeNetWithOOD, LayeredOODStats, OODStats, probe_features

        net = FameNodeNet(MAUNet(base_width=4), LesionClassifier(widths=(4, 8)))
        x = np.zeros((1, 32, 32), np.float32)
        widths = [f.shape[1] for f in probe_features(net, x, lesion_means=True)]
        net.probe = LayerProbe(tuple(widths), lesion_means=True)
        net.classifier.fc.requires_grad_(False)
        stats = LayeredOODStats(
            layers=tuple(OODStats(means=np.eye(3, w), precision=np.eye(w)) for w in widths[:6]),
            scales=tuple(1.0 for _ in widths[:6]),
        )
        return FameNodeNetWithOOD(net, stats, temperature=1.5)


class ACGANGeneratorFamily:
    """The ACGAN generator (training only, never exported): it takes noise and class
    indices, so it declares its own `inputs`; its training loss here is the distance to
    fixed target images (the masks in the generator's [-1, 1] range)."""

    in_channels = 1
    input_name = "noise"
    output_names: tuple[str, ...] = ("image",)
    latent_dim = 8

    @classmethod
    def build(cls) -> nn.Module:
        from trainer.models.acgan import ACGANGenerator

        return ACGANGenerator(latent_dim=cls.latent_dim, size=32, width=4)

    @classmethod
    def inputs(cls, n: int, s: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return torch.randn(n, cls.latent_dim, generator=generator), torch.arange(n) % 3

    @classmethod
    def output_shapes(cls, n: int, s: int) -> tuple[tuple[int, ...], ...]:
        return ((n, 1, s, s),)

    @classmethod
    def loss(cls, model: nn.Module, x: tuple[Tensor, Tensor]) -> Tensor:
        noise, labels = x
        masks, _ = _targets(len(noise), model.size)
        return F.mse_loss(model(noise, labels), masks * 2 - 1)


class ACGANDiscriminatorFamily:
    """The ACGAN discriminator: a real/fake logit and three class logits per image."""

    in_channels = 1
    input_name = "image"
    output_names: tuple[str, ...] = ("real_logit", "class_logits")

    @classmethod
    def build(cls) -> nn.Module:
        from trainer.models.acgan import ACGANDiscriminator

        return ACGANDiscriminator(size=32, width=4)

    @classmethod
    def output_shapes(cls, n: int, s: int) -> tuple[tuple[int, ...], ...]:
        return ((n, 1), (n, 3))

    @classmethod
    def loss(cls, model: nn.Module, x: Tensor) -> Tensor:
        _, labels = _targets(x.shape[0], x.shape[-1])
        adv, logits = model(x)
        real = (torch.arange(len(x)) % 2).float().view(-1, 1)  # half "real", half "fake"
        return F.binary_cross_entropy_with_logits(adv, real) + F.cross_entropy(logits, labels)


# Every family, for the contracts that run over all of them.
ALL_FAMILIES: tuple[type, ...] = (
    MAUNetFamily,
    ClassifierFamily,
    CombinedFamily,
    DualStageFamily,
    SingleBackboneFamily,
    CombinedDualStageFamily,
    FoldEnsembleFamily,
    LayerProbeFamily,
    LesionProbeFamily,
    ACGANGeneratorFamily,
    ACGANDiscriminatorFamily,
)
