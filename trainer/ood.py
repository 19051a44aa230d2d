"""Out-of-distribution score: how unlike the training images an image is, to the network.

An image the model was not trained for (another body part, a phantom, a screenshot) still
gets a softmax that sums to one, often a confident one. The score here is the Mahalanobis
distance of the classifier's pooled features to the nearest class mean, with one shared
covariance fitted on the training split (Lee et al., "A Simple Unified Framework for
Detecting Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018). The threshold
is a percentile of the validation split's scores, so about that share of in-distribution
images is flagged; the test images and the pydicom-data ultrasound frames (obstetric,
abdominal: not breast) measure how well it separates (`trainer.site_report`).

Bundles exported since 0.2.1 score several layers (`LayeredOODStats`, Lee et al.'s feature
ensemble), each as the per-channel spatial mean and standard deviation of the MAU-Net's
activations at that level (`MAUNet.forward_with_stats`; for a fold ensemble, its first fold
model's). Each layer's distance is divided by its median on the validation split and the
layers are averaged, so no layer dominates by its width. The classifier's features alone
learnt what separates benign from malignant lesions and little about what an image of a
breast looks like; an obstetric frame's texture statistics are far from any breast image's
(docs/RESULTS.md). Bundles 0.2.1 to 0.2.7 averaged six layers: the four encoder levels, the
bottleneck and the classifier's pooled features. Since 0.2.8 the head scores the four
encoder levels alone (`OOD_LAYERS`): on ultrasound phantoms, which look like breast tissue
and must be flagged, the bottleneck and the classifier's features are the layers that call
a phantom in distribution, and averaging them in let three of 24 phantoms past one
network's head.

`FameNodeNetWithOOD` computes the score inside the exported graph (output ``ood_score``,
one value per image), so every backend gets it with the other outputs. Where the segmenter
is a `FoldEnsemble`, the graph has a fourth output, ``seg_uncertainty`` (N,): the folds'
disagreement on each image (`trainer.models.fold_ensemble`), from the same single pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from trainer.models import FameNodeNet, FoldEnsemble

OOD_OUTPUT = "ood_score"
UNCERTAINTY_OUTPUT = "seg_uncertainty"  # the 4th output of a fold-ensemble model
SHRINKAGE = 1e-3  # ridge on the covariance, relative to its mean variance: keeps it invertible


@dataclass(frozen=True)
class OODStats:
    """Class means (K, D) and the shared precision matrix (D, D) of the features."""

    means: NDArray[np.float64]
    precision: NDArray[np.float64]

    @classmethod
    def fit(cls, features: NDArray[np.float64], labels: NDArray[np.int64]) -> OODStats:
        """Class means and the shared within-class covariance, shrunk towards a multiple of
        the identity by the Ledoit-Wolf intensity (at least `SHRINKAGE`).

        Shrinkage keeps the covariance well conditioned when the features are many for the
        cases (the ``paper`` classifier has 6336 features for 1353 training images; a node
        refitting on its own reviewed cases has tens of cases for 256 features), where the
        sample covariance is singular or its inverse dominated by noise.
        """
        f = np.asarray(features, np.float64)
        classes = sorted(set(int(k) for k in labels))
        if f.ndim != 2 or len(f) != len(labels) or len(f) < len(classes) + 2:
            raise ValueError(
                f"need (N, D) features with one label each and N at least the number of "
                f"classes + 2, got {f.shape} and {len(labels)} labels"
            )
        means = np.stack([f[labels == k].mean(axis=0) for k in classes])
        centred = f - means[np.searchsorted(classes, labels)]
        cov = centred.T @ centred / max(len(f) - len(classes), 1)
        target = float(np.trace(cov)) / cov.shape[0]
        if not target > 0:
            raise ValueError("the features do not vary: no covariance can be fitted")
        shrink = max(SHRINKAGE, ledoit_wolf_shrinkage(centred))
        cov = (1.0 - shrink) * cov + shrink * target * np.eye(cov.shape[0])
        return cls(means=means, precision=np.linalg.inv(cov))

    def score(self, features: NDArray[np.float64]) -> NDArray[np.float64]:
        """Squared Mahalanobis distance to the nearest class mean per feature, per row."""
        d = features[:, None, :] - self.means[None]
        dim = self.means.shape[1]
        return np.einsum("nkd,de,nke->nk", d, self.precision, d).min(axis=1) / dim


def ledoit_wolf_shrinkage(centred: NDArray[np.float64]) -> float:
    """The Ledoit-Wolf shrinkage intensity in [0, 1] of the covariance of `centred` rows
    (O. Ledoit, M. Wolf, "A well-conditioned estimator for large-dimensional covariance
    matrices", J. Multivariate Analysis 88 (2004); computed as scikit-learn's
    ``ledoit_wolf_shrinkage`` does, without its block splitting)."""
    x = np.asarray(centred, np.float64)
    n, p = x.shape
    x2 = x**2
    emp_cov_trace = x2.sum(axis=0) / n
    mu = float(emp_cov_trace.sum()) / p
    beta_ = float((x2.T @ x2).sum())
    delta_ = float(((x.T @ x) ** 2).sum()) / n**2
    beta = (beta_ / n - delta_) / (p * n)
    delta = (delta_ - 2.0 * mu * float(emp_cov_trace.sum()) + p * mu**2) / p
    beta = min(beta, delta)
    return 0.0 if beta <= 0 or delta <= 0 else float(beta / delta)


class MahalanobisHead(nn.Module):
    """`OODStats.score` in torch, on the classifier's features (exported into the graph)."""

    means: Tensor
    precision: Tensor

    def __init__(self, stats: OODStats) -> None:
        super().__init__()
        self.register_buffer("means", torch.tensor(stats.means, dtype=torch.float32))
        self.register_buffer("precision", torch.tensor(stats.precision, dtype=torch.float32))

    def forward(self, features: Tensor) -> Tensor:
        d = features[:, None, :] - self.means[None]  # (N, K, D)
        m = torch.matmul(d, self.precision)  # (N, K, D)
        # Per feature, so the score is of order 1 whatever the width (and float32-exact).
        return (m * d).sum(dim=2).min(dim=1).values / self.means.shape[1]


LAYER_NAMES = ("encoder1", "encoder2", "encoder3", "encoder4", "bottleneck", "classifier")
# The layers a bundle exported since 0.2.8 scores: the MAU-Net's four encoder levels. The
# bottleneck and the classifier's features are computed for the probe but not scored: on
# ultrasound phantoms, which a model must flag, they are the two layers that call a phantom
# in distribution (docs/RESULTS.md: the 0.2.8 paragraph and the table "Out-of-distribution
# heads over other layers", `trainer.ood_layers`).
OOD_LAYERS = LAYER_NAMES[:4]


@dataclass(frozen=True)
class LayeredOODStats:
    """`OODStats` per scored layer (`names`, in the order of `LAYER_NAMES`) and each
    layer's scale: the median of its scores on the validation split. The score is the mean
    over those layers of score / scale. Bundles 0.2.1 to 0.2.7 score all six layers."""

    layers: tuple[OODStats, ...]
    scales: tuple[float, ...]
    names: tuple[str, ...] = LAYER_NAMES

    def __post_init__(self) -> None:
        if not scored_layers_ok(self.names):
            raise ValueError(
                f"the scored layers {list(self.names)} are not a non-empty selection of "
                f"{list(LAYER_NAMES)} in that order"
            )
        if not len(self.layers) == len(self.scales) == len(self.names):
            raise ValueError(
                f"{len(self.layers)} layer statistics and {len(self.scales)} scales for the "
                f"{len(self.names)} scored layers {list(self.names)}"
            )

    @property
    def indices(self) -> tuple[int, ...]:
        """Where each scored layer is in `LAYER_NAMES` (and in `ood_features`' list)."""
        return tuple(LAYER_NAMES.index(n) for n in self.names)

    @classmethod
    def fit(
        cls,
        train: list[NDArray[np.float64]],
        labels: NDArray[np.int64],
        val: list[NDArray[np.float64]],
        names: tuple[str, ...] = OOD_LAYERS,
    ) -> LayeredOODStats:
        """Fit each of the layers `names` on the train features (`OODStats.fit`), scale it
        on val's; `train` and `val` hold every layer of `LAYER_NAMES` (`ood_features`)."""
        if len(train) != len(LAYER_NAMES) or len(val) != len(LAYER_NAMES):
            raise ValueError(
                f"need the {len(LAYER_NAMES)} layers {list(LAYER_NAMES)} for train and val, "
                f"got {len(train)} and {len(val)}"
            )
        if not scored_layers_ok(names):
            raise ValueError(f"cannot score the layers {list(names)} of {list(LAYER_NAMES)}")
        picked = [LAYER_NAMES.index(n) for n in names]
        layers = tuple(OODStats.fit(train[i], labels) for i in picked)
        scales = tuple(
            float(np.median(st.score(val[i]))) for st, i in zip(layers, picked, strict=True)
        )
        if not all(s > 0 for s in scales):
            raise ValueError(f"a layer's median validation score is not positive: {scales}")
        return cls(layers=layers, scales=scales, names=tuple(names))

    def layer_scores(self, features: list[NDArray[np.float64]]) -> NDArray[np.float64]:
        """Each scored layer's score / scale (N, L) of every layer's features (`ood_features`)."""
        return np.stack(
            [
                st.score(features[i]) / s
                for st, s, i in zip(self.layers, self.scales, self.indices, strict=True)
            ],
            axis=1,
        )

    def score(self, features: list[NDArray[np.float64]]) -> NDArray[np.float64]:
        """The layered score (N,) of every layer's features (N, D_l), as the graph computes."""
        return np.asarray(self.layer_scores(features).mean(axis=1))


def scored_layers_ok(names: tuple[str, ...]) -> bool:
    """Whether `names` is a non-empty selection of `LAYER_NAMES`, each once, in order."""
    known = [n for n in LAYER_NAMES if n in names]
    return bool(names) and list(names) == known


class LayeredMahalanobisHead(nn.Module):
    """`LayeredOODStats.score` in torch (exported into the graph)."""

    scales: Tensor

    def __init__(self, stats: LayeredOODStats) -> None:
        super().__init__()
        self.heads = nn.ModuleList(MahalanobisHead(st) for st in stats.layers)
        self.register_buffer("scales", torch.tensor(stats.scales, dtype=torch.float32))
        self.indices = stats.indices

    def forward(self, features: list[Tensor]) -> Tensor:
        """The score (N,) of every layer of `LAYER_NAMES` (the scored ones are picked)."""
        picked = [features[i] for i in self.indices]
        parts = torch.stack([head(f) for head, f in zip(self.heads, picked, strict=True)])
        return (parts / self.scales[:, None]).mean(dim=0)


def ood_features(
    net: FameNodeNet, images: NDArray[np.float32], batch: int = 64
) -> list[NDArray[np.float64]]:
    """Every OOD layer's features of preprocessed images (N, S, S), eval mode: one
    (N, D_l) array per layer of `LAYER_NAMES`, computed as the exported graph does."""
    return probe_features(net, images, lesion_means=False, batch=batch)


def probe_features(
    net: FameNodeNet, images: NDArray[np.float32], *, lesion_means: bool, batch: int = 64
) -> list[NDArray[np.float64]]:
    """What a layer probe reads of preprocessed images (N, S, S), eval mode: `ood_features`'
    layers and, with `lesion_means`, the MAU-Net's five level activations averaged inside
    the lesion map (`trainer.models.probe.LesionMeans`), as the exported graph computes
    them."""
    net.eval()
    out: list[list[NDArray[np.float64]]] = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch, None]))
            out.append([f.double().numpy() for f in net.graph_pass(x, lesion_means)[3]])
    return [np.concatenate(layer) for layer in zip(*out, strict=True)]


class FameNodeNetWithOOD(nn.Module):
    """`FameNodeNet` plus the out-of-distribution score: (lesion_prob, class_prob, ood), and
    the fold disagreement (seg_uncertainty) after them when the segmenter is a `FoldEnsemble`.

    `temperature` divides the classifier's logits (`trainer.calibration`): 1 leaves them.
    `stats` is a `LayeredOODStats` (what `exporters.fame_bundle` exports) or, as bundles
    before 0.2.1 had it, an `OODStats` of the classifier's features alone."""

    def __init__(
        self, net: FameNodeNet, stats: OODStats | LayeredOODStats, temperature: float = 1.0
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.net = net
        self.layered = isinstance(stats, LayeredOODStats)
        # Named apart from every other module: the FP16 export keeps this scope in FP32
        # (`exporters.fp16.DEFAULT_KEEP_FP32`); its precision matrices overflow float16.
        self.ood_head: nn.Module = (
            LayeredMahalanobisHead(stats)
            if isinstance(stats, LayeredOODStats)
            else MahalanobisHead(stats)
        )
        self.temperature = float(temperature)

    @property
    def output_names(self) -> tuple[str, ...]:
        """The names of `forward`'s outputs, in order (the ONNX graph's outputs)."""
        base = ("lesion_prob", "class_prob", OOD_OUTPUT)
        return (*base, UNCERTAINTY_OUTPUT) if self.has_uncertainty else base

    @property
    def has_uncertainty(self) -> bool:
        return isinstance(self.net.segmenter, FoldEnsemble)

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        # One pass over the folds gives the mean map, their disagreement and the features.
        lesion_prob, features, uncertainty, layers = self.net.graph_pass(image)
        logits = self.net.class_logits(features, layers)
        class_prob = torch.softmax(logits / self.temperature, dim=1)
        # The head scores the OOD layers; a lesion-means probe's inputs follow them.
        ood = self.ood_head(layers[: len(LAYER_NAMES)]) if self.layered else self.ood_head(features)
        if uncertainty is None:
            return lesion_prob, class_prob, ood
        return lesion_prob, class_prob, ood, uncertainty


def segmentation_uncertainty(
    net: FameNodeNet, images: NDArray[np.float32], batch: int = 64
) -> NDArray[np.float64]:
    """The fold disagreement (N,) of preprocessed images (N, S, S); the segmenter must be a
    `FoldEnsemble`."""
    segmenter = net.segmenter
    if not isinstance(segmenter, FoldEnsemble):
        raise ValueError(
            f"the segmenter is a {type(segmenter).__name__}, not a FoldEnsemble: a single "
            "model has no fold disagreement"
        )
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch, None]))
            out.append(segmenter.predict(x)[1].double().numpy())
    return np.concatenate(out)


def classifier_logits(net: FameNodeNet, layers: list[NDArray[np.float64]]) -> NDArray[np.float64]:
    """The class logits from every layer's features (`ood_features`; `probe_features` with
    lesion means for a probe that reads them), as the graph computes them
    (`FameNodeNet.class_logits`: the probe's where the net has one)."""
    net.eval()
    dtype = next(net.classifier.parameters()).dtype
    with torch.no_grad():
        per_layer = [torch.from_numpy(f).to(dtype) for f in layers]
        # The classifier's pooled features are the last OOD layer, whatever follows them.
        return net.class_logits(per_layer[len(LAYER_NAMES) - 1], per_layer).double().numpy()


def threshold_at(scores: NDArray[np.float64], flagged_share: float) -> float:
    """The score above which `flagged_share` of these (in-distribution) scores lie."""
    if not 0.0 < flagged_share < 1.0:
        raise ValueError(f"flagged_share must be in (0, 1), got {flagged_share}")
    return float(np.quantile(scores, 1.0 - flagged_share))
