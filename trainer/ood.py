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
ensemble): the MAU-Net's four encoder levels and its bottleneck, each as the per-channel
spatial mean and standard deviation of its activations (`MAUNet.forward_with_stats`; for a
fold ensemble, its first fold model's), and the classifier's pooled features. Each layer's
distance is divided by its median on the validation split and the layers are averaged, so
no layer dominates by its width. The classifier's features alone learnt what separates
benign from malignant lesions and little about what an image of a breast looks like; an
obstetric frame's texture statistics are far from any breast image's (docs/RESULTS.md).

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


@dataclass(frozen=True)
class LayeredOODStats:
    """`OODStats` per layer (`LAYER_NAMES`) and each layer's scale: the median of its
    scores on the validation split. The score is the mean over layers of score / scale."""

    layers: tuple[OODStats, ...]
    scales: tuple[float, ...]

    @classmethod
    def fit(
        cls,
        train: list[NDArray[np.float64]],
        labels: NDArray[np.int64],
        val: list[NDArray[np.float64]],
    ) -> LayeredOODStats:
        """Fit each layer on the train features (`OODStats.fit`), scale it on val's."""
        if len(train) != len(val) or not train:
            raise ValueError(
                f"need the same layers for train and val, got {len(train)} and {len(val)}"
            )
        layers = tuple(OODStats.fit(f, labels) for f in train)
        scales = tuple(float(np.median(st.score(v))) for st, v in zip(layers, val, strict=True))
        if not all(s > 0 for s in scales):
            raise ValueError(f"a layer's median validation score is not positive: {scales}")
        return cls(layers=layers, scales=scales)

    def score(self, features: list[NDArray[np.float64]]) -> NDArray[np.float64]:
        """The layered score (N,) of each layer's features (N, D_l), as the graph computes."""
        parts = [
            st.score(f) / s for st, s, f in zip(self.layers, self.scales, features, strict=True)
        ]
        return np.mean(parts, axis=0)


class LayeredMahalanobisHead(nn.Module):
    """`LayeredOODStats.score` in torch (exported into the graph)."""

    scales: Tensor

    def __init__(self, stats: LayeredOODStats) -> None:
        super().__init__()
        self.heads = nn.ModuleList(MahalanobisHead(st) for st in stats.layers)
        self.register_buffer("scales", torch.tensor(stats.scales, dtype=torch.float32))

    def forward(self, features: list[Tensor]) -> Tensor:
        parts = torch.stack([head(f) for head, f in zip(self.heads, features, strict=True)])
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
