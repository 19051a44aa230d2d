"""Calibrated class probabilities: temperature scaling, expected calibration error.

A network trained with cross-entropy is usually over-confident: of the images it calls
"90 % malignant", fewer than 90 % are. Temperature scaling (Guo et al., "On Calibration of
Modern Neural Networks", ICML 2017) divides the logits by one scalar T fitted on the
validation split by minimising the negative log-likelihood; the ranking of the classes, so
the diagnosis and the AUC, does not change, only how sure the node says it is. The fitted
T is part of the exported graph, so the confidence the node shows and its
``low_confidence`` flag are calibrated.

`expected_calibration_error` (ECE, equal-width bins over the top-class confidence) and
`reliability_bins` measure it on the test split (`trainer.site_report`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

TEMPERATURE_RANGE = (0.05, 20.0)


def fit_temperature(logits: NDArray[Any], labels: NDArray[np.int64]) -> float:
    """The T > 0 that minimises the NLL of softmax(logits / T) on (logits, labels)."""
    z = torch.as_tensor(np.asarray(logits, np.float64))
    y = torch.as_tensor(np.asarray(labels, np.int64))
    if z.ndim != 2 or len(z) != len(y) or len(y) == 0:
        raise ValueError(f"need (N, K) logits and N labels, got {tuple(z.shape)} and {len(y)}")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    low, high = TEMPERATURE_RANGE
    return float(np.clip(float(log_t.detach().exp()), low, high))


def expected_calibration_error(
    probs: NDArray[Any], labels: NDArray[np.int64], bins: int = 15
) -> float:
    """Sum over confidence bins of |accuracy - confidence| weighted by the bin's share."""
    rows = reliability_bins(probs, labels, bins)
    n = sum(r["n"] for r in rows)
    return float(sum(r["n"] / n * abs(r["accuracy"] - r["confidence"]) for r in rows if r["n"]))


def reliability_bins(
    probs: NDArray[Any], labels: NDArray[np.int64], bins: int = 15
) -> list[dict[str, float]]:
    """Per equal-width bin of top-class confidence: its count, mean confidence, accuracy."""
    p = np.asarray(probs, np.float64)
    y = np.asarray(labels, np.int64)
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        sel = which == b
        rows.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "n": int(sel.sum()),
                "confidence": float(conf[sel].mean()) if sel.any() else 0.0,
                "accuracy": float((pred[sel] == y[sel]).mean()) if sel.any() else 0.0,
            }
        )
    return rows
