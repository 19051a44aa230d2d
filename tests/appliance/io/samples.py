"""Test helpers: pydicom-data samples, edited copies of them, and small DICOM datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from appliance.io.sample_data import pydicom_data_files, ultrasound_sample_files

SAMPLES = {p.name: p for p in pydicom_data_files()}
US_FILES = ultrasound_sample_files()
needs_samples = pytest.mark.skipif(
    not SAMPLES, reason="pydicom-data is not installed (pip install 'fame-node[demo]')"
)
LIMITS = {"max_frames": 16, "max_pixels": 50_000_000}
CINE = "color3d_jpeg_baseline.dcm"  # 120 frames, JPEG baseline, YBR_FULL_422
CINE_16 = (0, 8, 16, 24, 32, 40, 48, 56, 63, 71, 79, 87, 95, 103, 111, 119)  # 16 of 120
US_SOP_CLASS = UID("1.2.840.10008.5.1.4.1.1.6.1")  # Ultrasound Image Storage


def sample(name: str) -> Path:
    """The path of a pydicom-data file; skips the test when it is not installed."""
    if name not in SAMPLES:
        pytest.skip(f"{name} is not in the installed pydicom-data")
    return SAMPLES[name]


def _edit(ds: Dataset, changes: dict[str, object]) -> Dataset:
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def relabelled(name: str, tmp_path: Path, **changes: object) -> Path:
    """A copy of a sample with attributes changed (None deletes one), written by pydicom."""
    ds = _edit(pydicom.dcmread(sample(name), force=True), changes)
    out = tmp_path / f"edited_{name}"
    ds.save_as(out)
    return out


def small_us_dataset(rows: int = 4, cols: int = 6, **changes: object) -> Dataset:
    """A minimal 8-bit MONOCHROME2 ultrasound image, then `changes` (None deletes)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = US_SOP_CLASS
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = US_SOP_CLASS, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.arange(rows * cols, dtype=np.uint8).tobytes()
    return _edit(ds, changes)


def write(ds: Dataset, path: Path) -> Path:
    """Save `ds` as a DICOM file (preamble, file meta) and return its path."""
    ds.save_as(path, enforce_file_format=True)
    return path
