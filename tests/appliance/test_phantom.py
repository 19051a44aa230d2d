"""Tests of the phantom generator (appliance.phantom) and its writers (appliance.phantom_dicom)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from PIL import Image

from appliance.phantom import (
    Phantom,
    PhantomSpec,
    make_phantom,
    max_feret_diameter,
    speckle_envelope,
)
from appliance.phantom_dicom import (
    US_IMAGE_STORAGE,
    US_MULTIFRAME_IMAGE_STORAGE,
    compose_canvas,
    write_phantom_cine_dicom,
    write_phantom_dicom,
    write_phantom_png,
)

CENTER = (180.0, 240.0)


def _ring(mask: np.ndarray, inner: int, outer: int) -> np.ndarray:
    """Pixels between `inner` and `outer` pixels outside the mask."""

    def grow(r: int) -> np.ndarray:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        return cv2.dilate(mask, kernel) > 0

    return grow(outer) & ~grow(inner)


# --- generation ---------------------------------------------------------------------------


def test_same_seed_same_pixels_other_seed_other_pixels() -> None:
    spec = PhantomSpec(lesion="lobulated", posterior="shadow", seed=7)
    a, b = make_phantom(spec), make_phantom(spec)
    c = make_phantom(PhantomSpec(lesion="lobulated", posterior="shadow", seed=8))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.image, c.image)
    assert a.image.dtype == np.uint8 and a.image.shape == (360, 480)
    assert a.mask.dtype == np.uint8 and set(np.unique(a.mask)) <= {0, 1}
    assert a.spec == spec


@pytest.mark.parametrize("angle", [0.0, 30.0, 90.0, 127.0])
@pytest.mark.parametrize("center", [CENTER, (170.5, 251.3)])
def test_ellipse_area_and_diameter_match_geometry(
    angle: float, center: tuple[float, float]
) -> None:
    a, b = 55.0, 35.0
    p = make_phantom(PhantomSpec(center=center, semi_axes_px=(a, b), angle_deg=angle))
    assert p.area_px == int(p.mask.sum())
    assert p.area_px == pytest.approx(math.pi * a * b, rel=0.02)
    assert p.max_diameter_px == pytest.approx(2 * max(a, b), abs=2.0)


def test_rotation_turns_the_long_axis() -> None:
    flat = make_phantom(PhantomSpec(center=CENTER, semi_axes_px=(60, 25), angle_deg=0))
    upright = make_phantom(PhantomSpec(center=CENTER, semi_axes_px=(60, 25), angle_deg=90))
    rows, cols = np.nonzero(flat.mask)
    assert np.ptp(cols) > 2 * np.ptp(rows)
    rows, cols = np.nonzero(upright.mask)
    assert np.ptp(rows) > 2 * np.ptp(cols)


def test_random_center_keeps_the_lesion_inside_the_image() -> None:
    for seed in range(5):
        p = make_phantom(PhantomSpec(seed=seed, semi_axes_px=(50, 30)))
        assert p.area_px == pytest.approx(math.pi * 50 * 30, rel=0.02)
        rows, cols = np.nonzero(p.mask)
        assert rows.min() > 0 and cols.min() > 0
        assert rows.max() < 359 and cols.max() < 479


def test_lobulated_is_one_region_with_lobes() -> None:
    p = make_phantom(PhantomSpec(lesion="lobulated", center=CENTER, semi_axes_px=(60, 40), seed=3))
    n_labels, _ = cv2.connectedComponents(p.mask)
    assert n_labels == 2  # background and one lesion
    contours, _ = cv2.findContours(p.mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    hull_area = cv2.contourArea(cv2.convexHull(contours[0]))
    assert cv2.contourArea(contours[0]) / hull_area < 0.97  # concave between the lobes
    assert 0.6 * math.pi * 60 * 40 < p.area_px < 1.4 * math.pi * 60 * 40
    assert p.max_diameter_px == pytest.approx(max_feret_diameter(p.mask))


def test_no_lesion_has_an_empty_mask() -> None:
    p = make_phantom(PhantomSpec(lesion="none", posterior="shadow", seed=2))
    assert p.area_px == 0 and not p.mask.any() and p.max_diameter_px == 0.0
    assert p.image.std() > 10  # still a textured image


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hypoechoic_lesion_is_darker_than_the_tissue_around_it(seed: int) -> None:
    p = make_phantom(PhantomSpec(center=CENTER, echogenicity=0.25, seed=seed))
    inside = p.mask > 0
    core = cv2.erode(p.mask, np.ones((9, 9), np.uint8)) > 0  # away from the blurred margin
    around = _ring(p.mask, 6, 20)
    assert p.image[core].mean() < 0.6 * p.image[around].mean()
    assert p.image[inside].mean() < p.image[around].mean() - 30


def test_anechoic_lesion_is_nearly_black() -> None:
    p = make_phantom(PhantomSpec(center=CENTER, echogenicity=0.0, posterior="enhancement"))
    core = cv2.erode(p.mask, np.ones((9, 9), np.uint8)) > 0
    assert p.image[core].mean() < 20


def test_speckle_envelope_is_rayleigh_and_laterally_elongated() -> None:
    rng = np.random.default_rng(0)
    env = speckle_envelope(np.ones((256, 256), np.float32), rng, noise_floor=0.0).astype(float)
    # Rayleigh: std/mean = sqrt(4/pi - 1) = 0.523 and mean^2 / mean power = pi/4.
    assert env.std() / env.mean() == pytest.approx(math.sqrt(4 / math.pi - 1), abs=0.03)
    assert env.mean() ** 2 / (env**2).mean() == pytest.approx(math.pi / 4, abs=0.02)
    assert (env**2).mean() == pytest.approx(1.0, rel=0.1)  # power follows reflectivity**2

    z = env - env.mean()

    def corr(dr: int, dc: int) -> float:
        a, b = z[: z.shape[0] - dr, : z.shape[1] - dc], z[dr:, dc:]
        return float((a * b).mean() / z.var())

    assert corr(0, 2) > 0.55  # grains are long along the lateral direction...
    assert corr(2, 0) < 0.25  # ...and short along depth
    half_power = speckle_envelope(np.full((128, 128), 0.5, np.float32), rng, noise_floor=0.0)
    assert (half_power.astype(float) ** 2).mean() == pytest.approx(0.25, rel=0.1)


@pytest.mark.parametrize("seed", [0, 4])
def test_shadow_darkens_below_the_lesion_and_enhancement_brightens(seed: int) -> None:
    spec = PhantomSpec(center=(150.0, 240.0), semi_axes_px=(40.0, 30.0), seed=seed)
    plain = make_phantom(spec)
    shadow = make_phantom(dataclasses.replace(spec, posterior="shadow"))
    bright = make_phantom(dataclasses.replace(spec, posterior="enhancement"))
    below = (slice(200, 260), slice(225, 255))
    beside = (slice(200, 260), slice(100, 130))
    assert shadow.image[below].mean() < plain.image[below].mean() - 25
    assert shadow.image[below].mean() < shadow.image[beside].mean() - 25
    assert bright.image[below].mean() > plain.image[below].mean() + 10
    assert np.array_equal(shadow.mask, plain.mask)


def test_max_feret_diameter_on_small_masks() -> None:
    mask = np.zeros((10, 10), np.uint8)
    assert max_feret_diameter(mask) == 0.0
    mask[2, 3] = 1
    assert max_feret_diameter(mask) == 0.0
    mask[5, 7] = 1  # not connected: still the largest distance between pixel centres
    assert max_feret_diameter(mask) == pytest.approx(5.0)
    square = np.zeros((20, 20), np.uint8)
    square[5:15, 5:15] = 1
    assert max_feret_diameter(square) == pytest.approx(9 * math.sqrt(2))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"height": 32},
        {"lesion": "square"},
        {"posterior": "halo"},
        {"semi_axes_px": (0.5, 10.0)},
        {"echogenicity": -0.1},
        {"center": (400.0, 10.0)},
        {"seed": -1},
    ],
)
def test_bad_specs_are_rejected_with_what_was_received(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"expected .* got"):
        PhantomSpec(**kwargs)  # type: ignore[arg-type]


# --- files --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_phantom(PhantomSpec(posterior="shadow", center=CENTER, seed=11))


def test_dicom_reads_back_with_region_calibration(tmp_path: Path, phantom: Phantom) -> None:
    path = tmp_path / "phantom.dcm"
    offset, canvas = (70, 50), (460, 620)
    write_phantom_dicom(
        path,
        phantom,
        pixel_spacing_mm=0.08,
        patient_id="PH-001",
        patient_name="Phantom^Breast",
        study_uid="1.2.3.4.5",
        region_offset=offset,
        canvas=canvas,
    )
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPClassUID == US_IMAGE_STORAGE == "1.2.840.10008.5.1.4.1.1.6.1"
    assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.Modality == "US" and ds.PhotometricInterpretation == "MONOCHROME2"
    assert (ds.BitsAllocated, ds.BitsStored, ds.SamplesPerPixel) == (8, 8, 1)
    assert ds.PatientID == "PH-001" and str(ds.PatientName) == "Phantom^Breast"
    assert ds.StudyInstanceUID == "1.2.3.4.5"
    pixels = ds.pixel_array
    expected = compose_canvas(
        phantom.image, pixel_spacing_mm=0.08, region_offset=offset, canvas=canvas
    )
    assert pixels.shape == canvas and np.array_equal(pixels, expected)
    (region,) = ds.SequenceOfUltrasoundRegions
    assert (region.RegionSpatialFormat, region.RegionDataType) == (1, 1)
    x0, y0 = region.RegionLocationMinX0, region.RegionLocationMinY0
    x1, y1 = region.RegionLocationMaxX1, region.RegionLocationMaxY1
    assert (x0, y0, x1, y1) == (70, 50, 70 + 480 - 1, 50 + 360 - 1)
    assert np.array_equal(pixels[y0 : y1 + 1, x0 : x1 + 1], phantom.image)
    assert region.PhysicalUnitsXDirection == region.PhysicalUnitsYDirection == 3
    assert region.PhysicalDeltaX == pytest.approx(0.008)
    assert region.PhysicalDeltaY == pytest.approx(0.008)
    assert region.ReferencePixelX0 == region.ReferencePixelY0 == 0
    outside = pixels.copy()
    outside[y0 : y1 + 1, x0 : x1 + 1] = 0
    assert (outside > 128).sum() > 50  # the UI border is there: cropping matters


def test_dicom_default_canvas_and_generated_uids(tmp_path: Path, phantom: Phantom) -> None:
    for name in ("a.dcm", "b.dcm"):
        write_phantom_dicom(
            tmp_path / name, phantom, pixel_spacing_mm=0.1, patient_id="P", patient_name="X^Y"
        )
    a, b = pydicom.dcmread(tmp_path / "a.dcm"), pydicom.dcmread(tmp_path / "b.dcm")
    assert a.SOPInstanceUID != b.SOPInstanceUID and a.StudyInstanceUID != b.StudyInstanceUID
    region = a.SequenceOfUltrasoundRegions[0]
    assert a.Rows > region.RegionLocationMaxY1 and a.Columns > region.RegionLocationMaxX1


def test_cine_dicom_has_all_frames(tmp_path: Path) -> None:
    frames = [make_phantom(PhantomSpec(center=CENTER, seed=s)) for s in range(3)]
    path = tmp_path / "cine.dcm"
    write_phantom_cine_dicom(
        path, frames, pixel_spacing_mm=0.1, patient_id="P", patient_name="X^Y", frame_time_ms=40
    )
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == US_MULTIFRAME_IMAGE_STORAGE == "1.2.840.10008.5.1.4.1.1.3.1"
    assert ds.NumberOfFrames == 3 and float(ds.FrameTime) == pytest.approx(40.0)
    assert ds.FrameIncrementPointer == pydicom.tag.Tag("FrameTime")
    region = ds.SequenceOfUltrasoundRegions[0]
    x0, y0 = region.RegionLocationMinX0, region.RegionLocationMinY0
    pixels = ds.pixel_array
    assert pixels.shape[0] == 3
    for frame, p in zip(pixels, frames, strict=True):
        assert np.array_equal(frame[y0 : y0 + 360, x0 : x0 + 480], p.image)


def test_writers_reject_bad_input(tmp_path: Path, phantom: Phantom) -> None:
    kw = {"pixel_spacing_mm": 0.1, "patient_id": "P", "patient_name": "X"}
    with pytest.raises(ValueError, match="canvas"):
        write_phantom_dicom(tmp_path / "x.dcm", phantom, canvas=(300, 300), **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pixel_spacing_mm"):
        write_phantom_dicom(
            tmp_path / "x.dcm", phantom, pixel_spacing_mm=0.0, patient_id="P", patient_name="X"
        )
    with pytest.raises(ValueError, match="empty"):
        write_phantom_cine_dicom(tmp_path / "c.dcm", [], **kw)  # type: ignore[arg-type]
    small = make_phantom(PhantomSpec(height=200, width=200, lesion="none"))
    with pytest.raises(ValueError, match="same size"):
        write_phantom_cine_dicom(tmp_path / "c.dcm", [phantom, small], **kw)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())


def test_png_reads_back_equal(tmp_path: Path, phantom: Phantom) -> None:
    path = tmp_path / "phantom.png"
    write_phantom_png(path, phantom)
    with Image.open(path) as img:
        assert img.mode == "L"
        assert np.array_equal(np.asarray(img), phantom.image)
