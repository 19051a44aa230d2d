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


def runaway_jpeg(side: int, repeats: int) -> bytes:
    """A progressive JPEG of a smooth side x side image whose last scan is repeated.

    Every extra scan is another full decoding pass: 1024 x 1024 with 2000 repeats is a
    30 KB file that Pillow decodes for seconds (the review's 7000 x 7000 took 61 s).
    """
    import io

    from PIL import Image

    y, x = np.mgrid[0:side, 0:side]
    image = Image.fromarray(((x + y) * 255 // (2 * side)).astype(np.uint8))
    buf = io.BytesIO()
    image.save(buf, "JPEG", progressive=True, quality=75)
    data = buf.getvalue()
    last, eoi = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
    return data[:eoi] + data[last:eoi] * repeats + data[eoi:]


def deflate_bomb(path: Path, inflated_bytes: int, rows: int = 64, cols: int = 64) -> Path:
    """A deflated ultrasound DICOM whose header says rows x cols but whose Pixel Data
    inflates to `inflated_bytes` zeros (built incrementally: never held in memory)."""
    import zlib

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = small_us_dataset(rows, cols, PixelData=None)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    pixel_header = b"\xe0\x7f\x10\x00OB\x00\x00" + int(inflated_bytes).to_bytes(4, "little")
    z = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)  # fast; still ~1000:1
    with path.open("wb") as fh:
        fh.write(bytes(128) + b"DICM" + meta.getvalue())
        fh.write(z.compress(body.getvalue() + pixel_header))
        chunk = bytes(1 << 20)
        for _ in range(inflated_bytes >> 20):
            fh.write(z.compress(chunk))
        fh.write(z.compress(bytes(inflated_bytes % (1 << 20))) + z.flush())
    return path
