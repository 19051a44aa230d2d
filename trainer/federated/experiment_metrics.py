"""The pure figures of the federation experiments: per-site scores, EA, the DP noise search.

- `site_figures`: Dice, AUC and accuracy of one model's outputs on one site's split, with the
  mask threshold chosen on that site's val split (`trainer.loops.choose_threshold`, the
  node's own postprocessing at the network grid) and then applied to its test split.
  Dice is the mean over images with a lesion; AUC is `trainer.metrics.classification_report`'s
  (BUSI: macro one-vs-rest over its three classes; BUS-BRA, which has no normal class:
  malignant vs benign).
- `equal_accuracy`: UltraFedFM's fairness metric EA (Methods, "Performance metrics", Eq. 35):
  ``EA = max_k |Score(A_k) - mean_k Score(A_k)|``, the largest distance of one client's test
  score from the unweighted mean over the clients; the paper's Score is the test AUROC. Lower
  is fairer. Here it is computed over AUC (as the paper) and, with the same formula, over Dice.
- `noise_for_epsilon`: the DP-SGD noise multiplier with which a site spends about a target
  epsilon at delta over the whole run, found by Opacus's own search
  (`opacus.accountants.utils.get_noise_multiplier`, RDP) and checked by composing the run's
  rounds in the project's `PrivacyAccountant` exactly as a node's ledger does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from appliance.federation.privacy import PrivacyAccountant
from trainer.federated import FederatedError
from trainer.loops import choose_threshold, segmentation_metrics
from trainer.metrics import classification_report
from trainer.models import CLASSES


@dataclass(frozen=True)
class Outputs:
    """A model's outputs on one split: lesion probabilities (N, S, S), class probabilities
    (N, 3); with the split's masks (N, S, S) and labels (N,)."""

    lesion: NDArray[np.float32]
    classes: NDArray[np.float32]
    masks: NDArray[np.uint8]
    labels: NDArray[np.int64]


def site_figures(
    val: Outputs,
    test: Outputs,
    min_area_px: float = 0.0,
    groups: Mapping[str, NDArray[np.int64]] | None = None,
) -> dict[str, object]:
    """Test figures of one site, the mask threshold chosen on its val split; with the same
    figures per group of test images (``by_scanner``) when `groups` names some."""
    threshold, sweep = choose_threshold(val.lesion, val.masks, min_area_px)
    seg = segmentation_metrics(test.lesion, test.masks, threshold, min_area_px)
    report = classification_report(list(test.labels), test.classes, CLASSES)
    val_report = classification_report(list(val.labels), val.classes, CLASSES)
    out: dict[str, object] = {
        "n_test": len(test.labels),
        "n_test_with_lesion": int(sum(bool(m.any()) for m in test.masks)),
        "threshold": threshold,
        "dice": _finite(seg["dice"]),
        "auc": report.macro_auc,
        "auc_kind": report.auc_kind,
        "accuracy": report.accuracy,
        "val_dice": _finite(sweep[threshold]["dice"]),
        "val_auc": val_report.macro_auc,
    }
    if groups:
        out["by_scanner"] = {
            name: _subset_figures(test, idx, threshold, min_area_px) for name, idx in groups.items()
        }
    return out


def _subset_figures(
    test: Outputs, index: NDArray[np.int64], threshold: float, min_area_px: float
) -> dict[str, object]:
    part = Outputs(test.lesion[index], test.classes[index], test.masks[index], test.labels[index])
    seg = segmentation_metrics(part.lesion, part.masks, threshold, min_area_px)
    report = classification_report(list(part.labels), part.classes, CLASSES)
    return {
        "n_test": len(index),
        "dice": _finite(seg["dice"]),
        "auc": report.macro_auc,
        "accuracy": report.accuracy,
    }


def val_score(val: Outputs, min_area_px: float = 0.0) -> float:
    """One number to select a round by: the mean of val Dice (best threshold) and val AUC."""
    threshold, sweep = choose_threshold(val.lesion, val.masks, min_area_px)
    auc = classification_report(list(val.labels), val.classes, CLASSES).macro_auc
    parts = [v for v in (_finite(sweep[threshold]["dice"]), auc) if v is not None]
    return float(np.mean(parts)) if parts else float("-inf")


def equal_accuracy(scores: Mapping[str, float | None] | Sequence[float | None]) -> float | None:
    """UltraFedFM's EA (Eq. 35): ``max_k |s_k - mean(s)|`` over the clients' test scores.

    None when any client's score is undefined (the mean would be over other clients).
    Raises FederatedError for fewer than two clients, where EA says nothing.
    """
    values = list(scores.values()) if isinstance(scores, Mapping) else list(scores)
    if len(values) < 2:
        raise FederatedError(
            f"EA compares clients: got {len(values)} score(s), expected at least two"
        )
    if any(v is None or not math.isfinite(v) for v in values):
        return None
    arr = np.asarray(values, dtype=np.float64)
    return float(np.max(np.abs(arr - arr.mean())))


@dataclass(frozen=True)
class NoiseChoice:
    """The noise multiplier for a site's run and the epsilon the accountant gives it."""

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    rounds: int
    epsilon: float
    delta: float


def noise_for_epsilon(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps_per_round: int,
    rounds: int,
    tolerance: float = 0.01,
) -> NoiseChoice:
    """The noise multiplier that spends at most `target_epsilon` (within `tolerance` below)
    over `rounds` rounds of `steps_per_round` DP-SGD steps at `sample_rate`.

    Raises FederatedError when the target is not a positive finite number, or when the
    project's accountant does not reproduce Opacus's search (it would be a bug).
    """
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise FederatedError(f"target epsilon {target_epsilon!r}: expected a number > 0")
    if rounds < 1 or steps_per_round < 1:
        raise FederatedError(
            f"rounds {rounds}, steps per round {steps_per_round}: expected both >= 1"
        )
    from opacus.accountants.utils import get_noise_multiplier  # torch: imported when needed

    sigma = float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps_per_round * rounds,
            accountant="rdp",
            epsilon_tolerance=tolerance,
        )
    )
    accountant = PrivacyAccountant.from_history([(sigma, sample_rate, steps_per_round)] * rounds)
    epsilon = accountant.epsilon(delta)
    if not target_epsilon - 2 * tolerance <= epsilon <= target_epsilon + 1e-9:
        raise FederatedError(
            f"noise multiplier {sigma:.4f} gives epsilon {epsilon:.4f} in the project's "
            f"accountant, Opacus's search aimed at {target_epsilon}: the two disagree"
        )
    return NoiseChoice(sigma, sample_rate, steps_per_round, rounds, epsilon, delta)


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)
