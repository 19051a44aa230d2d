"""Writers of phantom images as scanner-like files: DICOM US (single and cine) and PNG.

The DICOM files are real Ultrasound Image Storage (and Ultrasound Multi-frame Image Storage)
instances: Explicit VR Little Endian, MONOCHROME2, 8 bits. As on a scanner, the B-mode image
is one region of a larger screen capture whose border carries the user interface (text, a
grey bar, a depth ruler, a probe marker), and a Sequence of Ultrasound Regions item calibrates
that region in centimetres, so a reader has to find and crop it to measure correctly.

`compose_canvas` is the pure part (the screen capture as an array); the `write_*` functions
do the file I/O. The phantoms themselves come from `appliance.phantom`.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

from appliance.phantom import Phantom

US_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.6.1")
US_MULTIFRAME_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.3.1")

DEFAULT_REGION_OFFSET = (72, 56)  # (x0, y0): where the B-mode image starts on the screen
_MARGIN = (40, 72)  # default (bottom, right) border in pixels when no canvas is given


def compose_canvas(
    image: NDArray[np.uint8],
    *,
    pixel_spacing_mm: float,
    region_offset: tuple[int, int] = DEFAULT_REGION_OFFSET,
    canvas: tuple[int, int] | None = None,
) -> NDArray[np.uint8]:
    """The screen capture: `image` at `region_offset` (x0, y0) on a black UI of `canvas` (H, W).

    The image's pixels are copied unchanged; the user interface is drawn only outside it.
    `canvas` defaults to the image plus the offset and a border at the bottom and right.

    Raises:
        ValueError: a non-positive spacing, a negative offset or a canvas too small.
    """
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"image must be 2-D uint8, got shape {image.shape}, dtype {image.dtype}")
    _check_spacing(pixel_spacing_mm)
    h, w = image.shape
    x0, y0 = region_offset
    if x0 < 0 or y0 < 0:
        raise ValueError(f"region_offset (x0, y0) must be >= 0, got {region_offset}")
    h2, w2 = canvas if canvas is not None else (y0 + h + _MARGIN[0], x0 + w + _MARGIN[1])
    if h2 < y0 + h or w2 < x0 + w:
        raise ValueError(
            f"canvas (H, W) = {(h2, w2)} cannot hold the {h}x{w} image at offset (x0, y0) = "
            f"{region_offset}; use a canvas of at least {(y0 + h, x0 + w)}"
        )
    screen = np.zeros((h2, w2), np.uint8)
    _draw_ui(screen, (x0, y0, w, h), pixel_spacing_mm)
    screen[y0 : y0 + h, x0 : x0 + w] = image
    return screen


def write_phantom_dicom(
    path: Path,
    phantom: Phantom,
    *,
    pixel_spacing_mm: float,
    patient_id: str,
    patient_name: str,
    study_uid: str | None = None,
    region_offset: tuple[int, int] = DEFAULT_REGION_OFFSET,
    canvas: tuple[int, int] | None = None,
) -> None:
    """Write `phantom` as a DICOM Ultrasound Image Storage file at `path`.

    The phantom sits at `region_offset` (x0, y0) in a `canvas` (H, W) screen capture (see
    `compose_canvas`); its region is calibrated at `pixel_spacing_mm` in both directions.
    """
    screen = compose_canvas(
        phantom.image, pixel_spacing_mm=pixel_spacing_mm, region_offset=region_offset, canvas=canvas
    )
    ds = _dataset(
        US_IMAGE_STORAGE,
        screen.shape,
        patient_id=patient_id,
        patient_name=patient_name,
        study_uid=study_uid,
    )
    _add_region(ds, phantom.image.shape, region_offset, pixel_spacing_mm)
    ds.PixelData = _even(screen.tobytes())
    ds.save_as(path, enforce_file_format=True)


def write_phantom_cine_dicom(
    path: Path,
    phantoms: Sequence[Phantom],
    *,
    pixel_spacing_mm: float,
    patient_id: str,
    patient_name: str,
    study_uid: str | None = None,
    region_offset: tuple[int, int] = DEFAULT_REGION_OFFSET,
    canvas: tuple[int, int] | None = None,
    frame_time_ms: float = 50.0,
) -> None:
    """Write `phantoms` as the frames of one DICOM Ultrasound Multi-frame Image Storage file.

    All phantoms must have the same size; every frame shares one ultrasound region.
    """
    if not phantoms:
        raise ValueError("phantoms must hold at least one Phantom, got an empty sequence")
    shapes = {p.image.shape for p in phantoms}
    if len(shapes) != 1:
        raise ValueError(f"all phantoms must have the same size, got sizes {sorted(shapes)}")
    if not (math.isfinite(frame_time_ms) and frame_time_ms > 0):
        raise ValueError(f"frame_time_ms must be a positive number, got {frame_time_ms}")
    screens = np.stack(
        [
            compose_canvas(
                p.image,
                pixel_spacing_mm=pixel_spacing_mm,
                region_offset=region_offset,
                canvas=canvas,
            )
            for p in phantoms
        ]
    )
    ds = _dataset(
        US_MULTIFRAME_IMAGE_STORAGE,
        screens.shape[1:],
        patient_id=patient_id,
        patient_name=patient_name,
        study_uid=study_uid,
    )
    ds.NumberOfFrames = len(phantoms)
    ds.FrameTime = f"{frame_time_ms:.3f}"
    ds.FrameIncrementPointer = Tag("FrameTime")
    ds.CineRate = round(1000.0 / frame_time_ms)
    _add_region(ds, phantoms[0].image.shape, region_offset, pixel_spacing_mm)
    ds.PixelData = _even(screens.tobytes())
    ds.save_as(path, enforce_file_format=True)


def write_phantom_png(path: Path, phantom: Phantom) -> None:
    """Write the phantom's image (without any UI border) as an 8-bit greyscale PNG."""
    Image.fromarray(phantom.image).save(path, format="PNG")


def _even(data: bytes) -> bytes:
    """Pixel Data must have an even length: pad an odd one with a zero byte."""
    return data + b"\0" if len(data) % 2 else data


def _check_spacing(pixel_spacing_mm: float) -> None:
    if not (math.isfinite(pixel_spacing_mm) and 0.0 < pixel_spacing_mm <= 10.0):
        raise ValueError(
            f"pixel_spacing_mm must be in (0, 10] millimetres per pixel (typical breast "
            f"ultrasound: 0.05 to 0.2), got {pixel_spacing_mm}"
        )


def _dataset(
    sop_class: UID,
    shape: tuple[int, ...],
    *,
    patient_id: str,
    patient_name: str,
    study_uid: str | None,
) -> Dataset:
    """Patient, study, series, equipment and image-pixel attributes of a US instance."""
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    now = dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
    ds.AccessionNumber = ""
    ds.Modality = "US"
    ds.Manufacturer = "FAME Node"
    ds.ManufacturerModelName = "Breast ultrasound phantom"
    ds.ReferringPhysicianName = ""
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.BodyPartExamined = "BREAST"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    return ds


def _add_region(
    ds: Dataset, shape: tuple[int, ...], offset: tuple[int, int], pixel_spacing_mm: float
) -> None:
    """One Sequence of Ultrasound Regions item that bounds the B-mode image exactly."""
    h, w = int(shape[0]), int(shape[1])
    x0, y0 = offset
    region = Dataset()
    region.RegionSpatialFormat = 1  # 2D tissue image
    region.RegionDataType = 1  # tissue
    region.RegionFlags = 0
    region.RegionLocationMinX0 = x0
    region.RegionLocationMinY0 = y0
    region.RegionLocationMaxX1 = x0 + w - 1  # inclusive
    region.RegionLocationMaxY1 = y0 + h - 1
    region.PhysicalUnitsXDirection = 3  # cm
    region.PhysicalUnitsYDirection = 3
    region.PhysicalDeltaX = pixel_spacing_mm / 10.0
    region.PhysicalDeltaY = pixel_spacing_mm / 10.0
    region.ReferencePixelX0 = 0
    region.ReferencePixelY0 = 0
    ds.SequenceOfUltrasoundRegions = [region]


def _draw_ui(
    screen: NDArray[np.uint8], box: tuple[int, int, int, int], pixel_spacing_mm: float
) -> None:
    """Scanner-like annotations around the image box (x0, y0, w, h), drawn in place."""
    x0, y0, w, h = box
    font = cv2.FONT_HERSHEY_SIMPLEX
    lines = (
        "FAME  L12-5  Breast",
        "B  12MHz  Gn 52  DR 50",
        f"D {h * pixel_spacing_mm / 10:.1f}cm",
    )
    for i, text in enumerate(lines):
        cv2.putText(screen, text, (6, 14 + 14 * i), font, 0.4, 230, 1, cv2.LINE_AA)
    if x0 >= 24:  # grey-scale bar, left of the image
        bar_h = max(h // 3, 16)
        ramp = np.linspace(255, 0, bar_h).astype(np.uint8)[:, None]
        screen[y0 : y0 + bar_h, x0 - 20 : x0 - 12] = ramp
    if y0 >= 12:  # probe orientation marker, above the image's left edge
        cv2.circle(screen, (x0 + 6, y0 - 7), 4, 255, -1, cv2.LINE_AA)
    ruler_x = x0 + w + 10
    if ruler_x + 30 <= screen.shape[1]:  # depth ruler with a tick every 5 mm, labels in cm
        step = 5.0 / pixel_spacing_mm
        for k in range(int(h / step) + 1):
            y = y0 + round(k * step)
            length = 8 if k % 2 == 0 else 4
            cv2.line(screen, (ruler_x, y), (ruler_x + length, y), 255, 1)
            if k % 2 == 0 and k > 0:
                cv2.putText(screen, str(k // 2), (ruler_x + 11, y + 4), font, 0.35, 200, 1)
        cv2.line(screen, (ruler_x, y0), (ruler_x, y0 + h - 1), 160, 1)
        focus = y0 + int(0.45 * h)
        triangle = np.array(
            [[ruler_x - 2, focus], [ruler_x - 8, focus - 4], [ruler_x - 8, focus + 4]]
        )
        cv2.fillPoly(screen, [triangle], 255)
