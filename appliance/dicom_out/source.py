"""What the DICOM output is built from: the typed input, the source's header, the geometry.

`DicomOutInput` is what the pipeline hands over after a job's results are saved: the
source file (the node's spool copy), its `ImageMeta`, one `FrameResult` per analysed
frame (mask in the *cropped* frame's geometry, as the node analysed it) and the model
version. `read_source` reads the source's header only (highdicom needs the metadata, not
the pixels, so compressed transfer syntaxes cost nothing) and refuses a non-DICOM file.

The node crops each frame to the ultrasound region (`ImageMeta.crop`, (x0, y0, x1, y1),
x1/y1 exclusive) before analysis; a SEG must cover the stored image, so `pad_to_stored`
puts a cropped mask back at the crop's offset in the full Rows x Columns.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.valuerep import DA, TM

from appliance import __version__
from appliance.dicom_out.errors import DicomOutError
from appliance.io.types import ImageMeta

Mask = NDArray[np.uint8]
"""A lesion mask, (rows, columns) uint8, 0 background and non-zero (255) lesion."""

# Type 2 attributes of the source's Patient and General Study modules that highdicom copies
# into the SEG / SR. Type 2 means "present, possibly empty": a file that leaves one out
# (pydicom-data's color-pl.dcm has no Patient ID) means the same as an empty value, so the
# header copy gets an empty one instead of the SEG being refused.
_TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
_DATES = (("StudyDate", DA, ".-"), ("PatientBirthDate", DA, ".-"), ("StudyTime", TM, ":"))
# Type 1 in every image IOD and needed to file the result with the right study and image.
_TYPE1_NEEDED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


@dataclass(frozen=True)
class FrameResult:
    """The node's result for one analysed frame, as saved in result.json.

    `frame_index` is the frame's 0-based index in the file (`ImageMeta.frame_indices`);
    `mask` is in the cropped frame's geometry (the frame the model saw).
    """

    frame_index: int
    mask: Mask
    diagnosis: str
    probabilities: Mapping[str, float]
    confidence: float
    lesion_area_px: float
    max_diameter_px: float
    lesion_area_mm2: float | None = None
    max_diameter_mm: float | None = None
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeviceInfo:
    """The node as the equipment that made the SEG / SR (General Equipment module)."""

    serial_number: str
    software_version: str = __version__
    manufacturer: str = "FAME Node"
    model_name: str = "FAME Node"
    institution_name: str | None = None


@dataclass(frozen=True)
class DicomOutInput:
    """Everything the SEG and SR of one job are built from."""

    job_id: int
    source_path: Path
    meta: ImageMeta
    frames: tuple[FrameResult, ...]
    model_version: str  # the bundle's version label, e.g. "fame-mau-net@1.2.0"
    device: DeviceInfo = field(default_factory=lambda: DeviceInfo(serial_number="unknown"))


def read_source(path: Path, meta: ImageMeta | None = None) -> Dataset:
    """The source's header (no pixel data), checked and made ready for highdicom.

    Absent Type 2 patient / study attributes are added empty (see `_TYPE2_COPIED`); the
    file is not changed. With `meta`, the SOP Instance UID must be the one the node
    analysed, so a result is never filed under another image.

    Raises:
        DicomOutError: not a DICOM file (a PNG / JPEG gets no DICOM output), unreadable,
            or missing an identifier the PACS needs to file the result.
    """
    if meta is not None and meta.source_format != "dicom":
        raise DicomOutError(
            f"the source is a {meta.source_format.upper()} image, not DICOM: it has no "
            "patient, study or image identifiers to file a SEG / SR under. Nothing goes to "
            "the outbox; the results folder's masks and result.json are the record.",
            path=path,
        )
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError as exc:
        raise DicomOutError(
            f"{path.name} is not a DICOM file (no 'DICM' preamble): only DICOM sources get "
            "a SEG / SR; for PNG / JPEG inputs the results folder is the record.",
            path=path,
        ) from exc
    except (OSError, EOFError, ValueError, TypeError, KeyError) as exc:
        raise DicomOutError(
            f"cannot read the DICOM header of {path.name} ({type(exc).__name__}: {exc}); "
            "check that the node's spool copy is intact.",
            path=path,
        ) from exc
    missing = [k for k in _TYPE1_NEEDED if not str(ds.get(k) or "").strip()]
    if missing:
        raise DicomOutError(
            f"{path.name} has no {', '.join(missing)}: a SEG / SR must reference the study "
            "and image it was derived from, so none is written. Fix the scanner's export.",
            path=path,
        )
    if meta is not None and meta.sop_instance_uid not in (None, str(ds.SOPInstanceUID)):
        raise DicomOutError(
            f"{path.name} has SOP Instance UID {ds.SOPInstanceUID}, but the node analysed "
            f"{meta.sop_instance_uid}: refusing to file results under another image.",
            path=path,
        )
    ds = copy.deepcopy(ds)  # pydicom caches the read; never change a shared dataset
    for keyword in _TYPE2_COPIED:
        if keyword not in ds:
            setattr(ds, keyword, "")
    _conform_dates(ds, path)
    return ds


def _conform_dates(ds: Dataset, path: Path) -> None:
    """Rewrite ACR-NEMA style dates / times ("1994.11.05", "11:20:00") that highdicom
    copies into the DICOM form ("19941105", "112000"); the value itself is unchanged.

    Raises:
        DicomOutError: a value that is neither form (highdicom would refuse it).
    """
    for keyword, kind, separators in _DATES:
        raw = str(ds.get(keyword) or "").strip()
        if not raw:
            continue
        for candidate in (raw.translate({ord(c): None for c in separators}), raw):
            try:
                kind(candidate)
            except ValueError:
                continue
            setattr(ds, keyword, candidate)
            break
        else:
            raise DicomOutError(
                f"{path.name}: {keyword} {raw!r} is not a DICOM {kind.__name__} value; "
                "the SEG / SR copies it, so none can be written. Fix the scanner's export.",
                path=path,
            )


def n_frames(ds: Dataset) -> int:
    """Number of frames of the source (1 when Number of Frames is absent or empty)."""
    value = ds.get("NumberOfFrames")
    try:
        return max(int(value), 1) if value not in (None, "") else 1
    except (TypeError, ValueError) as exc:
        raise DicomOutError(f"Number of Frames is not an integer: {value!r}") from exc


def pad_to_stored(
    mask: Mask, crop: tuple[int, int, int, int] | None, rows: int, columns: int
) -> NDArray[np.bool_]:
    """`mask` (cropped geometry) as a boolean mask of the stored `rows` x `columns` image.

    `crop` is (x0, y0, x1, y1) in stored pixels, x1/y1 exclusive, as in `ImageMeta.crop`;
    None means the mask already covers the stored image.

    Raises:
        DicomOutError: the mask is not 2-D, or its size is not the crop's (or the image's).
    """
    if mask.ndim != 2:
        raise DicomOutError(f"a mask must be 2-D (rows, columns), got shape {mask.shape}")
    x0, y0, x1, y1 = crop if crop is not None else (0, 0, columns, rows)
    if not (0 <= x0 < x1 <= columns and 0 <= y0 < y1 <= rows):
        raise DicomOutError(
            f"crop (x0, y0, x1, y1) = {crop} does not lie in the stored {rows} x {columns} "
            "image; the ImageMeta does not belong to this source"
        )
    if mask.shape != (y1 - y0, x1 - x0):
        raise DicomOutError(
            f"mask is {mask.shape[0]} x {mask.shape[1]} pixels but the crop {crop} is "
            f"{y1 - y0} x {x1 - x0}: pass the mask the node wrote for this frame (cropped "
            "geometry), not a resized one"
        )
    full = np.zeros((rows, columns), dtype=np.bool_)
    full[y0:y1, x0:x1] = mask > 0
    return full


def crop_from_stored(
    full: NDArray[np.generic], crop: tuple[int, int, int, int] | None
) -> NDArray[np.generic]:
    """The crop (x0, y0, x1, y1; x1/y1 exclusive) of a stored-geometry array: the inverse
    of `pad_to_stored` inside the crop."""
    if crop is None:
        return full
    x0, y0, x1, y1 = crop
    return full[y0:y1, x0:x1]


def load_mask_png(path: Path) -> Mask:
    """A mask PNG the node wrote (`frame_NNN_mask.png`) as a 0/255 uint8 array.

    Raises:
        DicomOutError: the file cannot be read as a greyscale image.
    """
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"), dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise DicomOutError(f"cannot read mask {path.name}: {exc}", path=path) from exc
    return np.where(arr > 0, 255, 0).astype(np.uint8)


def finite_or_none(value: float | None) -> float | None:
    """`value` if it is a finite number, else None (a measurement not to report)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)
