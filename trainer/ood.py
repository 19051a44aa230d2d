"""Out-of-distribution score: how unlike the training images an image is, to the classifier.

An image the model was not trained for (another body part, a phantom, a screenshot) still
gets a softmax that sums to one, often a confident one. The score here is the Mahalanobis
distance of the classifier's pooled features to the nearest class mean, with one shared
covariance fitted on the training split (Lee et al., "A Simple Unified Framework for
Detecting Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018). The threshold
is a percentile of the validation split's scores, so about that share of in-distribution
images is flagged; the test images and the pydicom-data ultrasound frames (obstetric,
abdominal: not breast) measure how well it separates (`trainer.site_report`).

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


class FameNodeNetWithOOD(nn.Module):
    """`FameNodeNet` plus the out-of-distribution score: (lesion_prob, class_prob, ood), and
    the fold disagreement (seg_uncertainty) after them when the segmenter is a `FoldEnsemble`.

    `temperature` divides the classifier's logits (`trainer.calibration`): 1 leaves them."""

    def __init__(self, net: FameNodeNet, stats: OODStats, temperature: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.net = net
        self.head = MahalanobisHead(stats)
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
        segmenter = self.net.segmenter
        uncertainty: Tensor | None = None
        if isinstance(segmenter, FoldEnsemble):
            # One pass over the folds gives both the mean map and their disagreement.
            lesion_prob, uncertainty = segmenter.predict(image)
        else:
            lesion_prob = torch.sigmoid(segmenter(image))
        features = self.net.classifier.features(torch.cat([image, lesion_prob], dim=1))
        logits = self.net.classifier.classify_features(features)
        class_prob = torch.softmax(logits / self.temperature, dim=1)
        if uncertainty is None:
            return lesion_prob, class_prob, self.head(features)
        return lesion_prob, class_prob, self.head(features), uncertainty


def classifier_features(
    net: FameNodeNet, images: NDArray[np.float32], batch: int = 64
) -> NDArray[np.float64]:
    """The classifier's pooled features of preprocessed images (N, S, S), eval mode."""
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch, None]))
            lesion = torch.sigmoid(net.segmenter(x))
            out.append(net.classifier.features(torch.cat([x, lesion], dim=1)).double().numpy())
    return np.concatenate(out)


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


def classifier_logits(net: FameNodeNet, features: NDArray[np.float64]) -> NDArray[np.float64]:
    """The classifier's logits from its pooled features (`classifier_features`)."""
    net.eval()
    dtype = next(net.classifier.parameters()).dtype
    with torch.no_grad():
        f = torch.from_numpy(features).to(dtype)
        return net.classifier.classify_features(f).double().numpy()


def threshold_at(scores: NDArray[np.float64], flagged_share: float) -> float:
    """The score above which `flagged_share` of these (in-distribution) scores lie."""
    if not 0.0 < flagged_share < 1.0:
        raise ValueError(f"flagged_share must be in (0, 1), got {flagged_share}")
    return float(np.quantile(scores, 1.0 - flagged_share))
