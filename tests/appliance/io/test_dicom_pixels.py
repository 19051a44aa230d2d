"""Pure DICOM helpers on real files: frame choice, ultrasound regions, greyscale conversion.

Greyscale results are checked against independent references: Pillow's convert("L"),
pydicom's own LUT and windowing functions, and hand-computed values.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

from appliance.io.dicom import read_dicom
from appliance.io.dicom_pixels import (
    calibration,
    pixel_spacing,
    select_frames,
    ultrasound_region,
    window_to_uint8,
)
from appliance.io.images import read_image, rgb_to_grey
from tests.appliance.io.samples import (
    CINE,
    CINE_16,
    LIMITS,
    needs_samples,
    relabelled,
    sample,
    small_us_dataset,
    write,
)

# --- frames of a cine ---------------------------------------------------------------------


def test_select_frames() -> None:
    assert select_frames(5, 16) == (0, 1, 2, 3, 4)
    assert select_frames(16, 16) == tuple(range(16))
    assert select_frames(120, 16) == CINE_16
    assert select_frames(120, 1) == (0,)
    assert select_frames(10, 2) == (0, 9)
    assert select_frames(10, 3) == (0, 5, 9)
    for n, m in [(17, 16), (1000, 7), (33, 32)]:
        idx = select_frames(n, m)
        assert len(idx) == m and idx[0] == 0 and idx[-1] == n - 1
        assert all(b > a for a, b in itertools.pairwise(idx))
    with pytest.raises(ValueError, match="max_frames"):
        select_frames(10, 0)


# --- ultrasound regions and spacing -------------------------------------------------------

# Values as stored in the Sequence of Ultrasound Regions of each file (PhysicalDelta in cm).
REGIONS = {
    "JPGLosslessP14SV1_1s_1f_8b.dcm": ((14, 38, 1011, 759), 0.025476696592378157),
    "OBXXXX1A.dcm": ((120, 60, 800, 519), 0.02622878766196998),  # MaxX1 800 = Columns: clipped
    "OBXXXX1A_rle_2frame.dcm": ((120, 60, 800, 519), 0.02622878766196998),
    "color3d_jpeg_baseline.dcm": ((84, 31, 596, 415), 0.05104970559477806),
    # two equal 2-D regions side by side (dual view): the first is used
    "gdcm-US-ALOKA-16.dcm": ((32, 24, 336, 416), 0.03826530650258064),
    "gdcm-US-ALOKA-16_big.dcm": ((32, 24, 336, 416), 0.03826530650258064),
}


@needs_samples
@pytest.mark.parametrize("name", sorted(REGIONS))
def test_crop_and_spacing_from_ultrasound_region(name: str) -> None:
    crop, delta_cm = REGIONS[name]
    loaded = read_dicom(sample(name), **LIMITS)
    assert loaded.meta.crop == crop
    assert loaded.meta.pixel_spacing_mm == pytest.approx((delta_cm * 10, delta_cm * 10))
    x0, y0, x1, y1 = crop
    assert loaded.frames[0].shape == (y1 - y0, x1 - x0)


@needs_samples
@pytest.mark.parametrize("name", ["US1_UNCR.dcm", "US1_J2KI.dcm", "color-pl.dcm"])
def test_no_region_and_no_pixel_spacing_means_no_calibration(name: str) -> None:
    meta = read_dicom(sample(name), **LIMITS).meta
    assert meta.crop is None and meta.pixel_spacing_mm is None
    assert "no pixel calibration" in meta.notes


@needs_samples
def test_crop_is_the_region_of_the_full_frame(tmp_path: Path) -> None:
    cropped = read_dicom(sample("OBXXXX1A.dcm"), **LIMITS).frames[0]
    no_region = relabelled("OBXXXX1A.dcm", tmp_path, SequenceOfUltrasoundRegions=None)
    full = read_dicom(no_region, **LIMITS)
    assert full.meta.crop is None and full.frames[0].shape == (600, 800)
    np.testing.assert_array_equal(full.frames[0][60:519, 120:800], cropped)


@needs_samples
def test_pixel_spacing_is_the_fallback(tmp_path: Path) -> None:
    path = relabelled(
        "OBXXXX1A.dcm", tmp_path, SequenceOfUltrasoundRegions=None, PixelSpacing=[0.3, 0.4]
    )
    meta = read_dicom(path, **LIMITS).meta
    assert meta.pixel_spacing_mm == (0.3, 0.4) and meta.crop is None


def _region(x0: int, y0: int, x1: int, y1: int, **changes: object) -> Dataset:
    item = Dataset()
    item.RegionSpatialFormat, item.RegionDataType = 1, 1
    item.RegionLocationMinX0, item.RegionLocationMinY0 = x0, y0
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = x1, y1
    item.PhysicalUnitsXDirection = item.PhysicalUnitsYDirection = 3
    item.PhysicalDeltaX, item.PhysicalDeltaY = 0.01, 0.02
    for keyword, value in changes.items():
        setattr(item, keyword, value)
    return item


def test_ultrasound_region_choice() -> None:
    ds = Dataset()
    ds.SequenceOfUltrasoundRegions = [
        _region(0, 0, 999, 999, RegionSpatialFormat=2),  # M-mode: not 2-D
        _region(0, 0, 999, 999, PhysicalUnitsXDirection=4),  # seconds, not cm
        _region(0, 0, 999, 999, PhysicalDeltaX=0.0),  # uncalibrated
        _region(10, 10, 19, 19),  # 10 x 10
        _region(50, 20, 200, 80),  # 150 x 61 after clipping to 150 columns: the largest
        _region(500, 500, 600, 600),  # entirely outside the image
    ]
    region = ultrasound_region(ds, rows=100, cols=150)
    assert region is not None
    assert region.crop == (50, 20, 150, 81)
    assert region.spacing_mm == pytest.approx((0.2, 0.1))  # (row, column) = (dY, dX) x 10
    assert region.index == 4 and region.n_usable == 2
    assert ultrasound_region(Dataset(), rows=100, cols=150) is None


@pytest.mark.parametrize(
    ("dx", "dy"),
    [(math.nan, 0.02), (0.01, math.inf), (math.nan, math.inf), (-math.inf, 0.02), (0.0, -0.5)],
)
def test_region_calibration_not_finite_positive_keeps_the_crop_without_spacing(
    dx: float, dy: float
) -> None:
    ds = Dataset()
    ds.SequenceOfUltrasoundRegions = [
        _region(10, 10, 19, 19, PhysicalDeltaX=dx, PhysicalDeltaY=dy),
        _region(50, 20, 200, 80, PhysicalDeltaX=dx, PhysicalDeltaY=dy),
    ]
    region = ultrasound_region(ds, rows=100, cols=150)
    assert region is not None
    assert region.crop == (50, 20, 150, 81) and region.spacing_mm is None
    assert region.index == 1 and region.n_usable == 2
    calib = calibration(ds, rows=100, cols=150)
    assert calib.crop == (50, 20, 150, 81) and calib.spacing_mm is None
    assert calib.notes[-1] == (
        "the ultrasound region's calibration is not a finite positive number; sizes in pixels"
    )
    ds.PixelSpacing = [0.3, 0.4]  # an explicit image calibration is still the fallback
    assert calibration(ds, rows=100, cols=150).spacing_mm == (0.3, 0.4)


def test_a_calibrated_region_wins_over_a_larger_uncalibrated_one() -> None:
    ds = Dataset()
    ds.SequenceOfUltrasoundRegions = [
        _region(0, 0, 99, 99, PhysicalDeltaX=math.nan),
        _region(10, 10, 19, 19),
    ]
    region = ultrasound_region(ds, rows=100, cols=150)
    assert region is not None and region.crop == (10, 10, 20, 20) and region.index == 1
    assert region.spacing_mm == pytest.approx((0.2, 0.1)) and region.n_usable == 1


def test_region_with_insane_bounds_gives_no_crop() -> None:
    ds = Dataset()
    ds.SequenceOfUltrasoundRegions = [
        _region(500, 500, 600, 600, PhysicalDeltaX=math.nan),  # outside the image
        _region(80, 10, 40, 90, PhysicalDeltaY=math.inf),  # MaxX1 before MinX0
    ]
    assert ultrasound_region(ds, rows=100, cols=150) is None
    calib = calibration(ds, rows=100, cols=150)
    assert calib.crop is None and calib.spacing_mm is None
    assert calib.notes == ("no pixel calibration",)


@needs_samples
def test_nan_and_infinite_region_deltas_read_in_pixels(tmp_path: Path) -> None:
    ds = pydicom.dcmread(sample("OBXXXX1A.dcm"))
    ds.SequenceOfUltrasoundRegions[0].PhysicalDeltaX = math.nan
    ds.SequenceOfUltrasoundRegions[0].PhysicalDeltaY = math.inf
    path = tmp_path / "nan_region.dcm"
    ds.save_as(path)
    loaded = read_dicom(path, **LIMITS)
    assert loaded.meta.pixel_spacing_mm is None
    assert loaded.meta.crop == REGIONS["OBXXXX1A.dcm"][0]  # the bounds are sane: still cropped
    assert loaded.frames[0].shape == (459, 680)
    assert (
        "the ultrasound region's calibration is not a finite positive number; sizes in pixels"
        in loaded.meta.notes
    )


# --- greyscale conversion -----------------------------------------------------------------


@needs_samples
def test_rgb_dicom_grey_equals_pillow_and_png(tmp_path: Path) -> None:
    path = sample("US1_UNCR.dcm")
    rgb = pixel_array(path)
    expected = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))
    frame = read_dicom(path, **LIMITS).frames[0]
    np.testing.assert_array_equal(frame, expected)
    png = tmp_path / "same_picture.png"
    Image.fromarray(rgb, "RGB").save(png)
    np.testing.assert_array_equal(read_image(png, max_pixels=10**8).frames[0], frame)


@needs_samples
def test_ybr_cine_is_converted_to_rgb_before_grey() -> None:
    path = sample(CINE)
    rgb = pixel_array(path, index=119)  # pydicom: YBR_FULL_422 to RGB
    x0, y0, x1, y1 = REGIONS[CINE][0]
    expected = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))[y0:y1, x0:x1]
    frame = read_dicom(path, **LIMITS).frames[-1]
    np.testing.assert_array_equal(frame, expected)
    # grey ultrasound: had Y/Cb/Cr been taken as R/G/B, grey and green would differ widely
    assert np.abs(frame.astype(int) - rgb[y0:y1, x0:x1, 1]).mean() < 2


@needs_samples
def test_palette_colour_goes_through_its_lut() -> None:
    path = sample("OBXXXX1A.dcm")
    ds = pydicom.dcmread(path)
    rgb16 = apply_color_lut(ds.pixel_array, ds)  # little endian: pydicom reads it right
    expected = rgb_to_grey((rgb16 >> 8).astype(np.uint8))[60:519, 120:800]
    np.testing.assert_array_equal(read_dicom(path, **LIMITS).frames[0], expected)


@needs_samples
def test_monochrome1_window_matches_pydicom_and_is_inverted(tmp_path: Path) -> None:
    path = relabelled("RG1_UNCR.dcm", tmp_path, Modality="US")  # 15-bit, window 15000/30000
    ds = pydicom.dcmread(path)
    windowed = apply_voi_lut(ds.pixel_array, ds)  # 0 .. 2**15 - 1
    expected = 255 - np.rint(windowed * 255 / (2**15 - 1)).astype(int)
    loaded = read_dicom(path, max_frames=1, max_pixels=10**8)
    diff = np.abs(loaded.frames[0].astype(int) - expected)
    assert diff.max() <= 1 and diff.mean() < 0.01
    assert "MONOCHROME1 inverted" in loaded.meta.notes
    assert "window applied (center 15000, width 30000)" in loaded.meta.notes


@needs_samples
def test_signed_ct_window_after_rescale_matches_pydicom(tmp_path: Path) -> None:
    path = relabelled("693_UNCR.dcm", tmp_path, Modality="US")  # intercept -1024, 40/100
    ds = pydicom.dcmread(path)
    hu = apply_modality_lut(ds.pixel_array, ds)
    y_min, y_max = -(2**13) - 1024, 2**13 - 1 - 1024  # pydicom's output range
    expected = np.rint((apply_voi_lut(hu, ds) - y_min) * 255 / (y_max - y_min))
    diff = np.abs(read_dicom(path, **LIMITS).frames[0].astype(int) - expected)
    assert diff.max() <= 1 and diff.mean() < 0.01


@needs_samples
def test_deep_monochrome_without_window_is_rescaled_over_all_frames(tmp_path: Path) -> None:
    path = relabelled("emri_small.dcm", tmp_path, Modality="US")  # 10 frames, 12 bits
    stack = pydicom.dcmread(path).pixel_array.astype(float)
    lo, hi = stack.min(), stack.max()
    loaded = read_dicom(path, **LIMITS)
    assert len(loaded.frames) == 10
    for k, frame in enumerate(loaded.frames):
        np.testing.assert_array_equal(frame, np.rint((stack[k] - lo) * 255 / (hi - lo)))
    assert max(int(f.max()) for f in loaded.frames) == 255


@needs_samples
def test_one_bit_monochrome_becomes_0_and_255(tmp_path: Path) -> None:
    path = relabelled("liver.dcm", tmp_path, Modality="US")  # 1-bit segmentation frames
    frames = read_dicom(path, **LIMITS).frames
    assert len(frames) == 3
    assert set(np.unique(np.concatenate([f.ravel() for f in frames]))) == {0, 255}


def test_voi_lut_sequence_is_applied(tmp_path: Path) -> None:
    ds = small_us_dataset(rows=1, cols=4)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = np.array([0, 100, 200, 4000], dtype="<u2").tobytes()
    item = Dataset()
    item.LUTDescriptor = [256, 0, 16]  # 256 entries from 0, 16 bits each
    item.add_new("LUTData", "US", [min(65535, v * 512) for v in range(256)])
    ds.VOILUTSequence = [item]
    loaded = read_dicom(write(ds, tmp_path / "voi.dcm"), **LIMITS)
    expected = np.rint(np.array([0, 100 * 512, 65535, 65535]) * 255 / 65535)
    np.testing.assert_array_equal(loaded.frames[0][0], expected)
    assert "VOI LUT applied" in loaded.meta.notes


def test_window_formulas() -> None:
    x = np.array([0.0, 10.0, 20.0, 30.0, 40.0])
    # LINEAR (PS3.3 C.11.2.1.2): ((x - (c - 0.5)) / (w - 1) + 0.5) * 255, clipped
    assert window_to_uint8(x, 20, 21, "LINEAR").tolist() == [0, 6, 134, 255, 255]
    # LINEAR_EXACT: ((x - c) / w + 0.5) * 255, clipped
    assert window_to_uint8(x, 20, 20, "LINEAR_EXACT").tolist() == [0, 0, 128, 255, 255]
    # SIGMOID: 255 / (1 + exp(-4 (x - c) / w))
    assert window_to_uint8(x, 20, 20, "SIGMOID").tolist() == [5, 30, 128, 225, 250]


def test_pixel_spacing_fallback_values() -> None:
    ds = Dataset()
    assert pixel_spacing(ds) is None
    ds.PixelSpacing = [0.25, 0.5]
    assert pixel_spacing(ds) == (0.25, 0.5)
    ds.PixelSpacing = [0, 0]  # present but not calibrated (as in RG1_*.dcm)
    assert pixel_spacing(ds) is None
    for row, col in [("NaN", "0.5"), ("0.25", "Infinity"), ("-0.25", "0.5"), ("1e400", "1")]:
        ds.PixelSpacing = [row, col]
        assert pixel_spacing(ds) is None, (row, col)
    ds.PixelSpacing = "0.25"  # one value where two are required
    assert pixel_spacing(ds) is None
