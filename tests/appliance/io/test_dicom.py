"""DICOM reader: every ultrasound file of pydicom-data, cine sampling, metadata, rejections.

Real files only: pydicom-data's samples, copies of them edited with pydicom (relabelled,
truncated, re-encoded) and small datasets written by pydicom into tmp_path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG2MPML, DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGLosslessSV1

from appliance.errors import (
    CorruptFileError,
    EmptyFileError,
    ImageTooLargeError,
    NoPixelDataError,
    NotUltrasoundError,
    UnreadableFileError,
    UnsupportedFormatError,
)
from appliance.io.dicom import missing_decoder_reason, modality_name, read_dicom
from tests.appliance.io.samples import (
    CINE,
    CINE_16,
    LIMITS,
    SAMPLES,
    US_FILES,
    needs_samples,
    sample,
    small_us_dataset,
    write,
)

# --- every ultrasound file of pydicom-data ------------------------------------------------

EXPECTED_US = {
    "JPGLosslessP14SV1_1s_1f_8b.dcm", "OBXXXX1A.dcm", "OBXXXX1A_2frame.dcm",
    "OBXXXX1A_expb.dcm", "OBXXXX1A_expb_2frame.dcm", "OBXXXX1A_rle.dcm",
    "OBXXXX1A_rle_2frame.dcm", "US1_J2KI.dcm", "US1_J2KR.dcm", "US1_UNCI.dcm", "US1_UNCR.dcm",
    "color-pl.dcm", "color-px.dcm", "color3d_jpeg_baseline.dcm", "gdcm-US-ALOKA-16.dcm",
    "gdcm-US-ALOKA-16_big.dcm",
}  # fmt: skip


@needs_samples
def test_ultrasound_sample_files_are_the_known_us_files() -> None:
    assert {p.name for p in US_FILES} == EXPECTED_US
    assert len(SAMPLES) == 68


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, id=p.name) for p in US_FILES]
    or [pytest.param(None, marks=pytest.mark.skip(reason="pydicom-data is not installed"))],
)
def test_every_ultrasound_sample_decodes(path: Path) -> None:
    header = pydicom.dcmread(path, stop_before_pixels=True)
    loaded = read_dicom(path, **LIMITS)
    meta = loaded.meta
    n_total = int(header.get("NumberOfFrames") or 1)
    assert meta.source_format == "dicom" and meta.modality == "US"
    assert meta.n_frames_total == n_total
    assert len(loaded.frames) == len(meta.frame_indices) == min(n_total, 16)
    if meta.crop is None:
        expected_shape = (header.Rows, header.Columns)
    else:
        x0, y0, x1, y1 = meta.crop
        assert 0 <= x0 < x1 <= header.Columns and 0 <= y0 < y1 <= header.Rows
        expected_shape = (y1 - y0, x1 - x0)
    for frame in loaded.frames:
        assert frame.dtype == np.uint8 and frame.shape == expected_shape
        assert frame.flags.c_contiguous
        assert frame.std() > 5  # a real picture, not a constant or a decoding failure
    assert meta.sop_instance_uid == header.SOPInstanceUID
    assert meta.sop_class_uid == header.SOPClassUID
    assert meta.photometric == header.PhotometricInterpretation
    assert meta.bits_stored == header.BitsStored


@needs_samples
@pytest.mark.parametrize(
    ("reference", "variant"),
    [
        ("OBXXXX1A.dcm", "OBXXXX1A_expb.dcm"),  # big endian, 16-bit palette LUT
        ("OBXXXX1A.dcm", "OBXXXX1A_rle.dcm"),
        ("OBXXXX1A_2frame.dcm", "OBXXXX1A_expb_2frame.dcm"),
        ("OBXXXX1A_2frame.dcm", "OBXXXX1A_rle_2frame.dcm"),
        ("gdcm-US-ALOKA-16.dcm", "gdcm-US-ALOKA-16_big.dcm"),  # segmented 16-bit palette
        ("US1_UNCR.dcm", "US1_J2KR.dcm"),  # JPEG 2000 lossless, YBR_RCT
        ("US1_UNCI.dcm", "US1_J2KI.dcm"),  # JPEG 2000 lossy, YBR_ICT (UNCI is its decoding)
        ("color-px.dcm", "color-pl.dcm"),  # planar configuration 0 / 1
    ],
)
def test_encodings_of_one_picture_give_identical_frames(reference: str, variant: str) -> None:
    a = read_dicom(sample(reference), **LIMITS)
    b = read_dicom(sample(variant), **LIMITS)
    assert len(a.frames) == len(b.frames)
    for fa, fb in zip(a.frames, b.frames, strict=True):
        np.testing.assert_array_equal(fa, fb)


@needs_samples
def test_two_frame_file_holds_the_single_frame_then_another() -> None:
    single = read_dicom(sample("OBXXXX1A.dcm"), **LIMITS).frames
    double = read_dicom(sample("OBXXXX1A_2frame.dcm"), **LIMITS)
    assert double.meta.frame_indices == (0, 1) and double.meta.n_frames_total == 2
    np.testing.assert_array_equal(double.frames[0], single[0])
    assert np.abs(double.frames[1].astype(int) - double.frames[0]).max() > 100


# --- cine frame selection -----------------------------------------------------------------


@needs_samples
def test_cine_keeps_16_evenly_spaced_frames_and_all_when_they_fit() -> None:
    sampled = read_dicom(sample(CINE), max_frames=16, max_pixels=50_000_000)
    assert sampled.meta.frame_indices == CINE_16
    assert sampled.meta.n_frames_total == 120
    assert "frames sampled: 16 of 120" in sampled.meta.notes
    full = read_dicom(sample(CINE), max_frames=200, max_pixels=50_000_000)
    assert full.meta.frame_indices == tuple(range(120)) and len(full.frames) == 120
    assert not any(n.startswith("frames sampled") for n in full.meta.notes)
    for k, index in enumerate(CINE_16):  # the sampled frames are the right ones
        np.testing.assert_array_equal(sampled.frames[k], full.frames[index])


@needs_samples
def test_pixel_limit_counts_only_the_frames_to_decode() -> None:
    one_frame = 480 * 640
    loaded = read_dicom(sample(CINE), max_frames=2, max_pixels=2 * one_frame)
    assert loaded.meta.frame_indices == (0, 119)
    with pytest.raises(ImageTooLargeError) as info:
        read_dicom(sample(CINE), max_frames=3, max_pixels=2 * one_frame)
    assert "640 x 480 pixels x 3 frames" in info.value.reason
    assert "614,400" in info.value.reason  # the configured limit, printed


# --- metadata -----------------------------------------------------------------------------


@needs_samples
def test_metadata_from_the_header() -> None:
    meta = read_dicom(sample("JPGLosslessP14SV1_1s_1f_8b.dcm"), **LIMITS).meta
    ds = pydicom.dcmread(sample("JPGLosslessP14SV1_1s_1f_8b.dcm"), stop_before_pixels=True)
    assert meta.patient_name == "Citizen^Jan"
    assert meta.patient_id is None  # present but empty
    assert meta.study_date == "20190124"
    assert meta.manufacturer == "Philips Medical Systems" and meta.model_name == "EPIQ 7C"
    assert meta.study_instance_uid == ds.StudyInstanceUID
    assert meta.series_instance_uid == ds.SeriesInstanceUID
    assert meta.photometric == "MONOCHROME2" and meta.bits_stored == 8
    assert read_dicom(sample("US1_UNCR.dcm"), **LIMITS).meta.patient_id == "13US1"


@needs_samples
def test_deflated_transfer_syntax(tmp_path: Path) -> None:
    ds = pydicom.dcmread(sample("US1_UNCR.dcm"))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = write(ds, tmp_path / "deflated.dcm")
    expected = read_dicom(sample("US1_UNCR.dcm"), **LIMITS).frames[0]
    np.testing.assert_array_equal(read_dicom(path, **LIMITS).frames[0], expected)


# --- rejections ---------------------------------------------------------------------------


@needs_samples
@pytest.mark.parametrize(
    ("name", "code", "words"),
    [
        ("MR2_UNCR.dcm", "MR", "Magnetic Resonance"),
        ("emri_small_RLE.dcm", "MR", "Magnetic Resonance"),
        ("693_J2KR.dcm", "CT", "Computed Tomography"),
        ("RG1_UNCR.dcm", "CR", "Computed Radiography"),
        ("SC_rgb.dcm", "OT", "Other"),
        ("OT-PAL-8-face.dcm", "OT", "Other"),  # no preamble: read with force=True
        ("JPEG-LL.dcm", "NM", "Nuclear Medicine"),
        ("liver.dcm", "SEG", "Segmentation"),
    ],
)
def test_other_modalities_are_rejected_by_name(name: str, code: str, words: str) -> None:
    with pytest.raises(NotUltrasoundError) as info:
        read_dicom(sample(name), **LIMITS)
    assert info.value.modality == code
    assert f"DICOM modality is {code} ({words})" in info.value.reason
    assert "ultrasound (US) images only" in info.value.reason
    assert info.value.code == "not_ultrasound" and info.value.path == sample(name)


@pytest.mark.parametrize(
    ("modality", "expected"),
    [("SR", "SR (Structured Report)"), ("XYZ", "XYZ"), ("KO", "KO (Key Object Selection)")],
)
def test_modality_names(tmp_path: Path, modality: str, expected: str) -> None:
    assert modality_name(modality) == expected
    path = write(small_us_dataset(Modality=modality, PixelData=None), tmp_path / "x.dcm")
    with pytest.raises(NotUltrasoundError) as info:  # before looking for pixel data
        read_dicom(path, **LIMITS)
    assert f"DICOM modality is {expected};" in info.value.reason


def test_missing_modality_is_rejected(tmp_path: Path) -> None:
    path = write(small_us_dataset(Modality=None), tmp_path / "nomod.dcm")
    with pytest.raises(NotUltrasoundError) as info:
        read_dicom(path, **LIMITS)
    assert info.value.modality == "missing"
    assert "no Modality (0008,0060)" in info.value.reason


@needs_samples
def test_modality_is_checked_before_pixels(tmp_path: Path) -> None:
    data = sample("693_UNCR.dcm").read_bytes()  # CT, native pixel data
    path = tmp_path / "ct_cut.dcm"
    path.write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(NotUltrasoundError):
        read_dicom(path, **LIMITS)


def test_ultrasound_without_pixel_data(tmp_path: Path) -> None:
    path = write(small_us_dataset(PixelData=None), tmp_path / "nopix.dcm")
    with pytest.raises(NoPixelDataError) as info:
        read_dicom(path, **LIMITS)
    assert "no Pixel Data (7FE0,0010)" in info.value.reason


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.dcm"
    path.write_bytes(b"")
    with pytest.raises(EmptyFileError) as info:
        read_dicom(path, **LIMITS)
    assert info.value.reason == (
        "the file is empty (0 bytes); the export probably failed: export it again"
    )


@needs_samples
@pytest.mark.filterwarnings("ignore:End of file reached")  # pydicom, on encapsulated data
@pytest.mark.parametrize("name", ["US1_UNCR.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", CINE])
def test_truncated_ultrasound_file(tmp_path: Path, name: str) -> None:
    data = sample(name).read_bytes()
    path = tmp_path / "truncated.dcm"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError) as info:
        read_dicom(path, **LIMITS)
    assert "truncated" in info.value.reason and "export the image again" in info.value.reason


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "random.dcm"
    path.write_bytes(np.random.default_rng(7).bytes(4096))
    with pytest.raises(UnsupportedFormatError) as info:
        read_dicom(path, **LIMITS)
    assert info.value.reason.startswith("the content is not a DICOM file")
    assert "looks like unrecognised binary data" in info.value.reason


def test_preambleless_garbage_is_not_taken_for_dicom(tmp_path: Path) -> None:
    path = tmp_path / "garbage.dcm"  # starts like a Study Date element, then noise
    path.write_bytes(b"\x08\x00\x20\x00" + np.random.default_rng(3).bytes(2000))
    with pytest.raises(UnsupportedFormatError) as info:
        read_dicom(path, **LIMITS)
    assert "no SOP Class UID or Pixel Data" in info.value.reason


@pytest.mark.parametrize(("rows", "cols"), [(40000, 10), (10, 40000)])
def test_sides_beyond_32768_are_refused_before_decoding(
    tmp_path: Path, rows: int, cols: int
) -> None:
    ds = small_us_dataset(Rows=rows, Columns=cols)  # pixel data far too short: never read
    with pytest.raises(ImageTooLargeError) as info:
        read_dicom(write(ds, tmp_path / "big.dcm"), **LIMITS)
    assert f"{cols} x {rows} pixels" in info.value.reason and "32768" in info.value.reason


def test_missing_rows_is_corrupt(tmp_path: Path) -> None:
    path = write(small_us_dataset(Rows=None), tmp_path / "norows.dcm")
    with pytest.raises(CorruptFileError, match="lacks Rows"):
        read_dicom(path, **LIMITS)


@needs_samples
def test_transfer_syntax_without_decoder(tmp_path: Path) -> None:
    ds = pydicom.dcmread(sample("US1_UNCR.dcm"))
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = encapsulate([bytes(1000)])
    with pytest.raises(CorruptFileError) as info:
        read_dicom(write(ds, tmp_path / "mpeg.dcm"), **LIMITS)
    assert "MPEG2 Main Profile / Main Level (1.2.840.10008.1.2.4.100)" in info.value.reason


@needs_samples
def test_undecodable_jpeg_pixel_data(tmp_path: Path) -> None:
    ds = pydicom.dcmread(sample("US1_UNCR.dcm"))
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8])
    with pytest.raises(CorruptFileError) as info:
        read_dicom(write(ds, tmp_path / "badjpeg.dcm"), **LIMITS)
    assert (
        "JPEG Baseline (Process 1) (1.2.840.10008.1.2.4.50) pixel data cannot be decoded"
        in info.value.reason
    )


def test_missing_decoder_reason_for_jpeg_lossless() -> None:
    reason = missing_decoder_reason(JPEGLosslessSV1, ["pylibjpeg - requires ..."])
    assert "JPEG Lossless" in reason and "1.2.840.10008.1.2.4.70" in reason
    assert "python-gdcm" in reason and "pylibjpeg-libjpeg" in reason


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(UnreadableFileError, match="no longer exists"):
        read_dicom(tmp_path / "gone.dcm", **LIMITS)
    with pytest.raises(UnreadableFileError, match="folder"):
        read_dicom(tmp_path, **LIMITS)


@needs_samples
def test_the_input_file_is_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "copy.dcm"
    path.write_bytes(sample(CINE).read_bytes())
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    read_dicom(path, **LIMITS)
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
