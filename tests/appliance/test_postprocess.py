from __future__ import annotations

import math

import numpy as np
import pytest

from appliance.postprocess import analyse_lesions, clean_mask, diagnose, max_feret_diameter

CLASSES = ["normal", "benign", "malignant"]


def _disc(shape: tuple[int, int], centre: tuple[int, int], r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= r * r).astype(np.float32)


def test_small_components_dropped_and_holes_filled() -> None:
    prob = _disc((100, 100), (50, 50), 20)
    prob[48:52, 48:52] = 0  # a hole
    prob[5:7, 5:7] = 1  # speckle blob of 4 px
    mask, n = clean_mask(prob, 0.5, min_area_px=10)
    assert n == 1
    assert mask[50, 50] == 1  # hole filled
    assert mask[5, 5] == 0


def test_feret_diameter_of_rectangle_and_anisotropic_spacing() -> None:
    m = np.zeros((50, 80), dtype=np.uint8)
    m[10:20, 10:50] = 1  # 10 rows x 40 cols: pixel centres span 9 x 39
    assert max_feret_diameter(m) == pytest.approx(math.hypot(9, 39))
    assert max_feret_diameter(m, (0.5, 0.2)) == pytest.approx(math.hypot(9 * 0.5, 39 * 0.2))
    assert max_feret_diameter(np.zeros((5, 5), np.uint8)) == 0.0


def test_area_in_mm_uses_spacing_and_is_none_without() -> None:
    prob = _disc((200, 200), (100, 100), 30)
    with_mm = analyse_lesions(prob, threshold=0.5, min_area_px=5, spacing_mm=(0.1, 0.1))
    assert with_mm.area_px == pytest.approx(math.pi * 900, rel=0.02)
    assert with_mm.area_mm2 == pytest.approx(with_mm.area_px * 0.01)
    assert with_mm.max_diameter_mm == pytest.approx(6.0, abs=0.15)
    no_mm = analyse_lesions(prob, threshold=0.5, min_area_px=5, spacing_mm=None)
    assert no_mm.area_mm2 is None and no_mm.max_diameter_mm is None


def test_diagnosis_flags() -> None:
    d = diagnose(np.array([0.1, 0.5, 0.4]), CLASSES, low_confidence=0.6, lesion_found=True)
    assert d.label == "benign" and d.flags == ("low_confidence",)
    d = diagnose(np.array([0.9, 0.05, 0.05]), CLASSES, low_confidence=0.6, lesion_found=True)
    assert d.label == "normal" and d.flags == ("segmentation_disagrees",)
    d = diagnose(np.array([0.05, 0.05, 0.9]), CLASSES, low_confidence=0.6, lesion_found=False)
    assert d.flags == ("segmentation_disagrees",)
    d = diagnose(np.array([0.05, 0.05, 0.9]), CLASSES, low_confidence=0.6, lesion_found=True)
    assert d.flags == () and d.probabilities["malignant"] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="2 class probabilities for 3 classes"):
        diagnose(np.array([0.5, 0.5]), CLASSES, low_confidence=0.6, lesion_found=False)
