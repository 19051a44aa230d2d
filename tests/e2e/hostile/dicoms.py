"""DICOM files for the hostile corpus: good calibrated US instances (phantoms) and their
hostile variants (lying headers, NaN calibration, a deflate bomb, a UID conflict, a
re-send in another transfer syntax, no preamble), written with pydicom as real files.

Every builder starts from a valid instance and changes only what it is named after.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from appliance.phantom import PhantomSpec, make_phantom
from appliance.phantom_dicom import write_phantom_dicom
from tests.e2e.hostile.images import deflate_zeros


def us_phantom(
    path: Path, seed: int, *, patient_id: str = "HOSTILE-1", patient_name: str = "TEST^ONE"
) -> Dataset:
    """A calibrated US phantom instance (0.1 mm / pixel) at `path`; returns its dataset."""
    phantom = make_phantom(PhantomSpec(seed=seed))
    write_phantom_dicom(
        path, phantom, pixel_spacing_mm=0.1, patient_id=patient_id, patient_name=patient_name
    )
    return pydicom.dcmread(path)


def _save(ds: Dataset, path: Path) -> None:
    ds.save_as(path, enforce_file_format=True)


def with_header(source: Path, path: Path, *, rows: int, columns: int, pixel_bytes: int) -> None:
    """`source` with Rows / Columns set to the given values, new UIDs and only
    `pixel_bytes` bytes of Pixel Data: a header that lies about the image."""
    ds = pydicom.dcmread(source)
    ds.Rows, ds.Columns = rows, columns
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PixelData = bytes(pixel_bytes + pixel_bytes % 2)
    _save(ds, path)


def with_bad_calibration(source: Path, path: Path, *, in_region: bool) -> None:
    """`source` with NaN / Infinity calibration and a new SOP Instance UID.

    `in_region`: the ultrasound region's PhysicalDeltaX / Y (binary FD) become NaN and
    +Infinity; otherwise the region is removed and Pixel Spacing reads "NaN\\Infinity".
    """
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    if in_region:
        region = ds.SequenceOfUltrasoundRegions[0]
        region.PhysicalDeltaX = math.nan
        region.PhysicalDeltaY = math.inf
    else:
        del ds.SequenceOfUltrasoundRegions
    with pydicom.config.disable_value_validation():  # pydicom warns on a non-finite DS
        if not in_region:
            ds.PixelSpacing = ["NaN", "Infinity"]
        _save(ds, path)


def other_syntax(source: Path, path: Path) -> None:
    """The same instance (same UIDs, same decoded pixels) re-encoded Implicit VR Little Endian,
    as a PACS re-sends it after a transfer-syntax negotiation."""
    ds = pydicom.dcmread(source)
    if ds.file_meta.TransferSyntaxUID != ExplicitVRLittleEndian:
        raise ValueError(f"{source.name} must be Explicit VR Little Endian to re-encode")
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    _save(ds, path)


def without_preamble(source: Path, path: Path) -> None:
    """`source` (new SOP Instance UID) written as a bare Implicit VR Little Endian data set:
    no 128-byte preamble, no "DICM", no file meta (as old archives and some PACS write)."""
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = generate_uid()
    del ds.file_meta
    path.write_bytes(_implicit_le(ds))


def _implicit_le(ds: Dataset) -> bytes:
    fp = pydicom.filebase.DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    write_dataset(fp, ds)
    return fp.getvalue()


def uid_conflict(first: Path, path: Path, seed: int) -> None:
    """Another patient's image (other Patient ID and name, other pixels) that carries the SOP
    Instance UID of `first`: what a misconfigured modality or anonymiser produces."""
    ds = pydicom.dcmread(first)
    us_phantom(path, seed, patient_id="HOSTILE-OTHER-PATIENT", patient_name="OTHER^PATIENT")
    other = pydicom.dcmread(path)
    other.SOPInstanceUID = ds.SOPInstanceUID
    other.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    other.StudyInstanceUID = ds.StudyInstanceUID  # same study UID too: only patient + pixels differ
    _save(other, path)


def deflate_bomb(source: Path, path: Path, *, inflated_bytes: int = 1 << 30) -> None:
    """A Deflated Explicit VR Little Endian file of ~1 MB whose data set inflates to
    `inflated_bytes` of Pixel Data (8-bit frames of `source`'s size; Number of Frames to
    match): honest about its size in the header, ruinous to inflate in memory."""
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    frame = int(ds.Rows) * int(ds.Columns)
    frames = math.ceil(inflated_bytes / frame)
    ds.NumberOfFrames = frames
    ds.SOPInstanceUID = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    body = pydicom.filebase.DicomBytesIO()
    body.is_little_endian = True
    body.is_implicit_VR = False
    write_dataset(body, ds)
    n_pixels = frames * frame + (frames * frame) % 2
    # (7FE0,0010) OB, two reserved bytes, 32-bit length: the element header, then the zeros.
    pixel_header = b"\xe0\x7f\x10\x00OB\x00\x00" + n_pixels.to_bytes(4, "little")
    stream = deflate_zeros(n_pixels, prefix=body.getvalue() + pixel_header)
    head = pydicom.filebase.DicomBytesIO()
    head.is_little_endian = True
    head.is_implicit_VR = False
    head.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    path.write_bytes(head.getvalue() + stream)


def grey_frame(source: Path) -> np.ndarray:
    """The first frame of a DICOM as 8-bit grey (mean of colour samples), for PNG variants."""
    ds = pydicom.dcmread(source)
    arr = ds.pixel_array
    if arr.ndim == 4 or (arr.ndim == 3 and int(ds.get("SamplesPerPixel", 1)) == 1):
        arr = arr[0]
    if arr.ndim == 3:
        arr = arr.mean(axis=2)
    arr = arr.astype(np.float64)
    span = float(arr.max() - arr.min()) or 1.0
    return ((arr - arr.min()) * (255.0 / span)).astype(np.uint8)
