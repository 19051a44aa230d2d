"""Too small or blank: the pure verdict, and read_file refusing such files (issue 8 item 3)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from appliance.errors import NoContentError
from appliance.io.content import blank_reason, frame_stats, judge_content, side_refusal
from appliance.io.reader import read_file
from appliance.io.types import ReadLimits
from tests.appliance.io.samples import US_FILES, needs_samples, small_us_dataset, write
from tests.conftest import BUSI_DIR, BUSI_MANIFEST, needs_busi

RNG = np.random.default_rng(8)


def speckle(rows: int = 120, cols: int = 160) -> np.ndarray:
    return RNG.integers(20, 200, size=(rows, cols), dtype=np.uint8)


def test_real_looking_frames_are_kept() -> None:
    verdict = judge_content([speckle(), speckle(32, 32)], min_side=32)
    assert verdict.reason is None and verdict.keep == (0, 1) and verdict.notes == ()


@pytest.mark.parametrize(("rows", "cols"), [(1, 1), (1, 400), (400, 1), (5, 600), (31, 64)])
def test_too_small_is_refused(rows: int, cols: int) -> None:
    verdict = judge_content([speckle(rows, cols)], min_side=32)
    assert verdict.keep == ()
    assert verdict.reason == side_refusal(rows, cols, 32)
    assert f"the image is {cols} x {rows} pixels, smaller than the 32 pixels" in verdict.reason


def noisy_constant(kind: str) -> np.ndarray:
    if kind == "constant":
        return np.full((200, 300), 128, np.uint8)
    if kind == "black":
        return np.zeros((200, 300), np.uint8)
    if kind == "gaussian sigma 1":
        return np.clip(np.rint(128 + RNG.normal(0, 1, (200, 300))), 0, 255).astype(np.uint8)
    if kind == "uniform +-2":
        return (128 + RNG.integers(-2, 3, (200, 300))).astype(np.uint8)
    if kind == "two levels":  # a near-constant 16-bit frame stretched min-max to 0/255
        return (RNG.integers(0, 2, (200, 300)) * 255).astype(np.uint8)
    # a blank screen with a small burned-in label (under 1 % of the pixels)
    frame = np.full((200, 300), 40, np.uint8)
    frame[5:12, 5:60] = RNG.integers(0, 256, (7, 55))
    return frame


@pytest.mark.parametrize(
    "kind", ["constant", "black", "gaussian sigma 1", "uniform +-2", "two levels", "label"]
)
def test_blank_is_refused(kind: str) -> None:
    verdict = judge_content([noisy_constant(kind)], min_side=32)
    assert verdict.keep == () and verdict.reason is not None
    assert verdict.reason.startswith("the image is blank: ")
    assert "nothing for a model to judge" in verdict.reason


def test_blank_reason_words() -> None:
    assert blank_reason(frame_stats(np.full((40, 40), 7, np.uint8))) == (
        "it has only 1 grey level (a real image has many more)"
    )
    assert blank_reason(frame_stats(noisy_constant("uniform +-2"))) == (
        "it has only 5 grey levels (a real image has many more)"
    )
    flat = (128 + RNG.integers(-4, 5, (200, 300))).astype(np.uint8)  # 9 levels, all +-4
    assert blank_reason(frame_stats(flat)) == (
        "98 % of its pixels lie within 9 grey levels (124..132 of 0..255): a uniform screen"
    )


def test_cine_drops_blank_frames_with_a_note() -> None:
    frames = [speckle(), noisy_constant("constant"), speckle(), noisy_constant("black")]
    verdict = judge_content(frames, min_side=32, indices=(0, 8, 16, 24))
    assert verdict.reason is None and verdict.keep == (0, 2)
    assert verdict.notes == ("blank frames left out: 8, 24 (2 of 4 read)",)


def test_all_blank_cine_is_refused() -> None:
    verdict = judge_content([noisy_constant("constant")] * 3, min_side=32)
    assert verdict.keep == () and verdict.reason is not None
    assert verdict.reason.startswith("all 3 frames are blank: it has only 1 grey level")


def test_frame_stats_checks_its_input() -> None:
    with pytest.raises(ValueError, match="2-D uint8"):
        frame_stats(np.zeros((4, 4), np.float32))


# --- read_file refuses them -------------------------------------------------------------


@pytest.mark.parametrize(("rows", "cols"), [(1, 1), (1, 300), (5, 300)])
def test_read_file_refuses_tiny_images(tmp_path: Path, rows: int, cols: int) -> None:
    path = tmp_path / "tiny.png"
    Image.fromarray(speckle(rows, cols)).save(path)
    with pytest.raises(NoContentError) as info:
        read_file(path)
    assert info.value.code == "no_content" and "smaller than the 32 pixels" in info.value.reason
    if rows * cols > 1:  # a single pixel is blank as well
        assert read_file(path, limits=ReadLimits(min_side=1)).frames[0].shape == (rows, cols)


@pytest.mark.parametrize("kind", ["constant", "gaussian sigma 1"])
def test_read_file_refuses_blank_png_and_dicom(tmp_path: Path, kind: str) -> None:
    png = tmp_path / "blank.png"
    Image.fromarray(noisy_constant(kind)).save(png)
    with pytest.raises(NoContentError, match="the image is blank"):
        read_file(png)
    ds = small_us_dataset(200, 300, PixelData=noisy_constant(kind).tobytes())
    with pytest.raises(NoContentError, match="the image is blank"):
        read_file(write(ds, tmp_path / "blank.dcm"))


def test_read_file_drops_blank_cine_frames(tmp_path: Path) -> None:
    frames = [speckle(64, 80), noisy_constant("constant")[:64, :80], speckle(64, 80)]
    ds = small_us_dataset(64, 80, PixelData=b"".join(f.tobytes() for f in frames))
    ds.NumberOfFrames = 3
    loaded = read_file(write(ds, tmp_path / "cine.dcm"))
    assert loaded.meta.frame_indices == (0, 2) and len(loaded.frames) == 2
    np.testing.assert_array_equal(loaded.frames[1], frames[2])
    assert "blank frames left out: 1 (1 of 3 read)" in loaded.meta.notes


@needs_samples
def test_every_pydicom_data_ultrasound_frame_has_content() -> None:
    for path in US_FILES:
        loaded = read_file(path, max_frames=1000)
        assert len(loaded.frames) == loaded.meta.n_frames_total, path.name  # none dropped


@needs_busi
def test_every_busi_image_has_content() -> None:
    with BUSI_MANIFEST.open(newline="") as fh:
        images = [BUSI_DIR / row["image"] for row in csv.DictReader(fh)]
    assert len(images) > 700
    for path in images:
        assert judge_content(read_file(path).frames, min_side=32).reason is None, path.name
