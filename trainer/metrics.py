"""Segmentation and classification metrics as pure numpy functions (no torch, no I/O).

Used by training (model selection) and by `fame-node evaluate`, so both report the same
figures. Conventions:

- Dice / IoU of an image whose prediction and truth are both empty is 1 (a correct
  "no lesion"); `segmentation_summary` reports the mean over images with a lesion
  (the figure papers report) and over all images separately.
- Macro AUC is one-vs-rest over the classes present in the truth. When the truth has only
  two classes (e.g. benign / malignant data sets), the AUC reported is that of the
  positive class (the last class present, "malignant") against the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray


def dice(pred: NDArray[Any], truth: NDArray[Any]) -> float:
    """Dice coefficient of two binary masks of the same shape (1.0 when both are empty)."""
    _same_shape(pred, truth)
    p, t = pred > 0, truth > 0
    denom = int(p.sum()) + int(t.sum())
    return 1.0 if denom == 0 else 2.0 * int((p & t).sum()) / denom


def iou(pred: NDArray[Any], truth: NDArray[Any]) -> float:
    """Intersection over union of two binary masks (1.0 when both are empty)."""
    _same_shape(pred, truth)
    p, t = pred > 0, truth > 0
    union = int((p | t).sum())
    return 1.0 if union == 0 else int((p & t).sum()) / union


def hd95(pred: NDArray[Any], truth: NDArray[Any]) -> float | None:
    """95th percentile of the symmetric boundary distances of two masks, in pixels.

    None when either mask is empty (the distance is undefined). Distances are exact
    Euclidean (OpenCV's precise distance transform) from each boundary pixel of one mask
    to the nearest boundary pixel of the other.
    """
    _same_shape(pred, truth)
    p, t = pred > 0, truth > 0
    if not p.any() or not t.any():
        return None
    bp, bt = _boundary(p), _boundary(t)
    to_t = cv2.distanceTransform((~bt).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    to_p = cv2.distanceTransform((~bp).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return float(np.percentile(np.concatenate([to_t[bp], to_p[bt]]), 95))


def _boundary(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    # Pixels of the mask with a 4-neighbour outside it (the image edge counts as outside).
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & mask
    return mask & ~inner


def _same_shape(a: NDArray[Any], b: NDArray[Any]) -> None:
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: prediction {a.shape}, truth {b.shape}")


def confusion_matrix(truth: Sequence[int], pred: Sequence[int], n_classes: int) -> NDArray[Any]:
    """Rows: true class, columns: predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    for t, p in zip(truth, pred, strict=True):
        if not (0 <= t < n_classes and 0 <= p < n_classes):
            raise ValueError(f"class index out of range 0..{n_classes - 1}: truth {t}, pred {p}")
        cm[t, p] += 1
    return cm


def roc_auc(scores: NDArray[Any], positive: NDArray[Any]) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with tie correction); None if undefined."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(
    scores: NDArray[Any], positive: NDArray[Any]
) -> tuple[list[float], list[float]] | None:
    """The ROC curve's points (false-positive rates, true-positive rates), from (0, 0) to
    (1, 1), one point per distinct score (ties move both rates at once); None if undefined.

    The trapezoidal area under these points equals `roc_auc` (ties counted one half)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the end of each run of ties
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    fpr = [0.0, *(fps / n_neg).tolist()]
    tpr = [0.0, *(tps / n_pos).tolist()]
    return fpr, tpr


@dataclass(frozen=True)
class ClassificationReport:
    classes: list[str]
    n: int
    accuracy: float
    macro_f1: float
    macro_auc: float | None
    auc_kind: str  # "macro one-vs-rest over k classes" or "malignant vs rest"
    per_class: dict[str, dict[str, float | None]]  # sensitivity, specificity, f1, auc, support
    confusion: list[list[int]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def classification_report(
    truth: Sequence[int], probs: NDArray[Any], classes: Sequence[str]
) -> ClassificationReport:
    """Accuracy, macro F1 and AUC, per-class sensitivity / specificity, confusion matrix.

    `probs` has shape (n, len(classes)). Macro F1 averages over the classes present in the
    truth (a benign/malignant data set is not penalised for never seeing "normal").
    """
    p = np.asarray(probs, dtype=np.float64)
    k = len(classes)
    if p.ndim != 2 or p.shape != (len(truth), k):
        raise ValueError(f"expected probabilities of shape ({len(truth)}, {k}), got {p.shape}")
    t = np.asarray(truth, dtype=np.int64)
    pred = p.argmax(axis=1)
    cm = confusion_matrix(list(t), list(pred), k)
    present = [c for c in range(k) if (t == c).any()]
    per_class: dict[str, dict[str, float | None]] = {}
    f1s: list[float] = []
    aucs: list[float] = []
    for c in range(k):
        tp = int(cm[c, c])
        fn = int(cm[c].sum() - tp)
        fp = int(cm[:, c].sum() - tp)
        tn = int(cm.sum() - tp - fn - fp)
        sens = tp / (tp + fn) if tp + fn else None
        spec = tn / (tn + fp) if tn + fp else None
        prec = tp / (tp + fp) if tp + fp else 0.0
        f1 = 2 * prec * sens / (prec + sens) if sens and prec + sens > 0 else 0.0
        auc = roc_auc(p[:, c], t == c)
        per_class[classes[c]] = {
            "support": float(tp + fn),
            "sensitivity": sens,
            "specificity": spec,
            "f1": f1 if c in present else None,
            "auc": auc,
        }
        if c in present:
            f1s.append(f1)
            if auc is not None:
                aucs.append(auc)
    if len(present) == 2:
        pos = present[-1]
        macro_auc = roc_auc(p[:, pos], t == pos)
        auc_kind = f"{classes[pos]} vs rest"
    else:
        macro_auc = float(np.mean(aucs)) if aucs else None
        auc_kind = f"macro one-vs-rest over {len(present)} classes"
    return ClassificationReport(
        classes=list(classes),
        n=len(t),
        accuracy=float((pred == t).mean()) if len(t) else 0.0,
        macro_f1=float(np.mean(f1s)) if f1s else 0.0,
        macro_auc=macro_auc,
        auc_kind=auc_kind,
        per_class=per_class,
        confusion=cm.tolist(),
    )


@dataclass(frozen=True)
class SegmentationSummary:
    n_images: int
    n_with_lesion: int
    dice_lesion: float | None  # mean over images whose truth has a lesion
    iou_lesion: float | None
    dice_all: float  # mean over all images (empty/empty counts as 1)
    iou_all: float
    false_positive_rate_normal: float | None  # share of lesion-free images given a lesion

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def segmentation_summary(
    preds: Sequence[NDArray[Any]], truths: Sequence[NDArray[Any]]
) -> SegmentationSummary:
    if len(preds) != len(truths):
        raise ValueError(f"{len(preds)} predictions for {len(truths)} truths")
    d = [dice(p, t) for p, t in zip(preds, truths, strict=True)]
    j = [iou(p, t) for p, t in zip(preds, truths, strict=True)]
    has = [bool((t > 0).any()) for t in truths]
    d_les = [x for x, h in zip(d, has, strict=True) if h]
    j_les = [x for x, h in zip(j, has, strict=True) if h]
    empty_preds = [bool((p > 0).any()) for p, h in zip(preds, has, strict=True) if not h]
    return SegmentationSummary(
        n_images=len(d),
        n_with_lesion=len(d_les),
        dice_lesion=float(np.mean(d_les)) if d_les else None,
        iou_lesion=float(np.mean(j_les)) if j_les else None,
        dice_all=float(np.mean(d)) if d else 0.0,
        iou_all=float(np.mean(j)) if j else 0.0,
        false_positive_rate_normal=float(np.mean(empty_preds)) if empty_preds else None,
    )
