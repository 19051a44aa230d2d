from __future__ import annotations

import numpy as np
import pytest

from appliance.preprocess import (
    PreprocessParams,
    letterbox_geometry,
    letterbox_mask,
    preprocess,
    unletterbox,
)


def test_output_shape_dtype_and_zscore_of_content() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(300, 500), dtype=np.uint8)
    out, geo = preprocess(img, PreprocessParams(size=128))
    assert out.shape == (128, 128) and out.dtype == np.float32
    # aspect ratio kept: 500 wide -> 128, 300 high -> 77, centred
    assert (geo.new_w, geo.new_h) == (128, 77)
    assert geo.pad_top == (128 - 77) // 2
    content = out[geo.pad_top : geo.pad_top + geo.new_h]
    assert abs(float(content.mean())) < 1e-4
    assert abs(float(content.std()) - 1.0) < 1e-3
    assert np.all(out[: geo.pad_top] == 0) and np.all(out[geo.pad_top + geo.new_h :] == 0)


def test_speckle_filters_reduce_noise() -> None:
    rng = np.random.default_rng(1)
    img = np.clip(128 + rng.normal(0, 40, size=(128, 128)), 0, 255).astype(np.uint8)
    raw, _ = preprocess(img, PreprocessParams(median_kernel=1, gaussian_sigma=0.0))
    smooth, _ = preprocess(img, PreprocessParams(median_kernel=3, gaussian_sigma=1.0))
    # z-scored, so compare the high-frequency energy (differences of neighbours)
    assert np.abs(np.diff(smooth, axis=1)).mean() < 0.6 * np.abs(np.diff(raw, axis=1)).mean()


def test_is_pure_and_deterministic() -> None:
    img = np.random.default_rng(2).integers(0, 256, size=(64, 80), dtype=np.uint8)
    copy = img.copy()
    a, _ = preprocess(img, PreprocessParams(size=64, clahe=True))
    b, _ = preprocess(img, PreprocessParams(size=64, clahe=True))
    assert np.array_equal(a, b)
    assert np.array_equal(img, copy)


def test_sixteen_bit_input_is_rescaled_like_eight_bit() -> None:
    img8 = np.random.default_rng(3).integers(0, 256, size=(64, 64), dtype=np.uint8)
    img16 = img8.astype(np.uint16) * 257
    a, _ = preprocess(img8, PreprocessParams(size=64))
    b, _ = preprocess(img16, PreprocessParams(size=64))
    assert np.allclose(a, b, atol=1e-4)


def test_mask_round_trip_through_letterbox() -> None:
    mask = np.zeros((200, 300), dtype=np.uint8)
    mask[50:150, 100:220] = 1
    small = letterbox_mask(mask, 128)
    geo = letterbox_geometry(200, 300, 128)
    back = unletterbox(small.astype(np.float32), geo) >= 0.5
    inter = np.logical_and(back, mask > 0).sum()
    assert 2 * inter / (back.sum() + mask.sum()) > 0.97


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 100}, "multiple of 16"),
        ({"median_kernel": 4}, "odd"),
        ({"gaussian_sigma": -1.0}, ">= 0"),
    ],
)
def test_bad_parameters_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PreprocessParams(**kwargs)  # type: ignore[arg-type]


def test_params_round_trip_and_unknown_keys() -> None:
    p = PreprocessParams(size=96, clahe=True)
    assert PreprocessParams.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="unknown preprocessing parameters"):
        PreprocessParams.from_dict({"size": 96, "gamma": 2})


def test_rejects_colour_input() -> None:
    with pytest.raises(ValueError, match="2-D greyscale"):
        preprocess(np.zeros((10, 10, 3), dtype=np.uint8), PreprocessParams())
