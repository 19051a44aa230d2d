"""ROC points (`trainer.metrics.roc_curve`, `trainer.site_report.roc_curves`) and the PNG
figures drawn from a site report (`trainer.figures`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from trainer.calibration import reliability_bins
from trainer.figures import render_report
from trainer.metrics import classification_report, roc_auc, roc_curve
from trainer.site_report import roc_curves

CLASSES = ("normal", "benign", "malignant")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_area_under_the_points_is_the_auc_also_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, 60) / 5.0  # few distinct values: many ties
    positive = rng.random(60) < 0.4
    curve = roc_curve(scores, positive)
    assert curve is not None
    fpr, tpr = curve
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(scores, positive), abs=1e-12)
    assert roc_curve(scores, np.zeros(60, bool)) is None


def _probs(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    logits = rng.normal(size=(len(labels), 3))
    logits[np.arange(len(labels)), labels] += 1.5
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def test_roc_curves_follow_the_auc_kind() -> None:
    rng = np.random.default_rng(0)
    three = np.arange(30) % 3
    report = classification_report(list(three), _probs(three, rng), CLASSES)
    assert sorted(roc_curves(_probs(three, rng), three, CLASSES, report.auc_kind)) == sorted(
        CLASSES
    )
    two = 1 + np.arange(30) % 2  # benign / malignant only, as BUS-BRA
    report = classification_report(list(two), _probs(two, rng), CLASSES)
    assert report.auc_kind == "malignant vs rest"
    assert list(roc_curves(_probs(two, rng), two, CLASSES, report.auc_kind)) == ["malignant"]


def test_render_report_writes_one_png_per_test_set(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    targets: dict[str, dict[str, Any]] = {}
    for key, labels in (("busi", np.arange(30) % 3), ("busbra-logiq7", 1 + np.arange(20) % 2)):
        probs = _probs(labels, rng)
        report = classification_report(list(labels), probs, CLASSES)
        targets[key] = {
            "n": len(labels),
            "classification": {
                "accuracy": report.accuracy,
                "auc_kind": report.auc_kind,
                "per_class": report.per_class,
                "confusion": report.confusion,
                "ece": 0.1,
                "reliability": reliability_bins(probs, labels, bins=10),
                "roc": roc_curves(probs, labels, CLASSES, report.auc_kind),
            },
        }
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"model": "m@1", "targets": targets}))
    written = render_report(path, tmp_path / "figures")
    assert [p.name for p in written] == ["run-busi.png", "run-busbra-logiq7.png"]
    for p in written:
        with Image.open(p) as img:
            assert img.format == "PNG" and img.size[0] > 800 and img.size[1] > 300
    del targets["busi"]["classification"]["roc"]
    path.write_text(json.dumps({"model": "m@1", "targets": targets}))
    with pytest.raises(SystemExit, match="no ROC points"):
        render_report(path, tmp_path / "again")
