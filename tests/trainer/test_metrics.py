from __future__ import annotations

import numpy as np
import pytest

from trainer.metrics import (
    classification_report,
    confusion_matrix,
    dice,
    iou,
    roc_auc,
    segmentation_summary,
)

CLASSES = ["normal", "benign", "malignant"]


def test_dice_and_iou_values() -> None:
    a = np.zeros((10, 10), np.uint8)
    b = np.zeros((10, 10), np.uint8)
    a[:, :5] = 1  # 50 px
    b[:, 2:7] = 1  # 50 px, overlap 30
    assert dice(a, b) == pytest.approx(0.6)
    assert iou(a, b) == pytest.approx(30 / 70)
    assert dice(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    with pytest.raises(ValueError, match="differ in shape"):
        dice(a, np.zeros((5, 5)))


def test_auc_matches_hand_computed_values_with_ties() -> None:
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert roc_auc(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)
    assert roc_auc(np.array([0.1, 0.2]), np.array([1, 1])) is None


def test_classification_report_three_classes() -> None:
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.7, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    r = classification_report([0, 1, 2, 1], probs, CLASSES)
    assert r.accuracy == pytest.approx(0.75)
    assert r.confusion == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert r.macro_f1 == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert r.per_class["benign"]["sensitivity"] == pytest.approx(0.5)
    assert r.per_class["normal"]["specificity"] == pytest.approx(2 / 3)
    assert r.auc_kind.startswith("macro")


def test_two_class_data_reports_malignant_vs_rest_auc() -> None:
    probs = np.array([[0.1, 0.8, 0.1], [0.1, 0.3, 0.6], [0.2, 0.2, 0.6], [0.0, 0.9, 0.1]])
    r = classification_report([1, 2, 2, 1], probs, CLASSES)
    assert r.auc_kind == "malignant vs rest"
    assert r.macro_auc == pytest.approx(1.0)
    assert r.per_class["normal"]["f1"] is None  # absent class does not count in macro F1
    assert r.macro_f1 == pytest.approx(1.0)


def test_confusion_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="out of range"):
        confusion_matrix([0, 3], [0, 0], 3)


def test_segmentation_summary_separates_lesion_and_normal_images() -> None:
    les = np.zeros((4, 4), np.uint8)
    les[:2, :2] = 1
    empty = np.zeros((4, 4), np.uint8)
    s = segmentation_summary([les, les], [les, empty])
    assert s.dice_lesion == pytest.approx(1.0)
    assert s.dice_all == pytest.approx(0.5)
    assert s.false_positive_rate_normal == pytest.approx(1.0)


def test_hd95_of_shifted_squares_is_the_shift_and_none_when_empty() -> None:
    from trainer.metrics import hd95

    a = np.zeros((64, 64), np.uint8)
    b = np.zeros((64, 64), np.uint8)
    a[10:40, 10:40] = 1
    b[10:40, 14:44] = 1  # the same square 4 px to the right
    assert hd95(a, a) == 0.0
    assert hd95(a, b) == pytest.approx(4.0, abs=0.01)
    assert hd95(a, np.zeros_like(a)) is None
    with pytest.raises(ValueError, match="differ in shape"):
        hd95(a, b[:10])
