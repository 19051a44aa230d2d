"""The pipeline's entry point: dispatch by content, and every kind of bad input it meets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from appliance.errors import (
    CorruptFileError,
    EmptyFileError,
    InputError,
    NotUltrasoundError,
    UnreadableFileError,
    UnsupportedFormatError,
)
from appliance.io.reader import read_file, sniff_format
from appliance.io.sample_data import pydicom_data_files, ultrasound_sample_files
from tests.appliance.io.samples import SAMPLES, US_FILES, needs_samples, sample

US_NAMES = {p.name for p in US_FILES}


def test_sniff_format() -> None:
    assert sniff_format(bytes(128) + b"DICM" + bytes(4)) == "dicom"
    assert sniff_format(b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100") == "dicom"  # no preamble
    assert sniff_format(b"\x89PNG\r\n\x1a\n" + bytes(24)) == "png"
    assert sniff_format(b"\xff\xd8\xff\xdb" + bytes(24)) == "jpeg"
    assert sniff_format(b"BM" + bytes(12) + b"\x7c\x00\x00\x00" + bytes(8)) == "bmp"
    assert sniff_format(b"Patient called, exam rescheduled.") is None
    assert sniff_format(b"") is None


@needs_samples
def test_the_content_decides_not_the_name(tmp_path: Path) -> None:
    dicom_as_png = tmp_path / "scan.png"
    dicom_as_png.write_bytes(sample("US1_UNCR.dcm").read_bytes())
    loaded = read_file(dicom_as_png)
    assert loaded.meta.source_format == "dicom" and loaded.meta.modality == "US"
    assert loaded.meta.notes[-1] == "named .png but the content is DICOM"

    png_as_dcm = tmp_path / "export.dcm"
    grey = np.arange(48 * 40, dtype=np.uint8).reshape(48, 40)  # wraps: a real image
    Image.fromarray(grey).save(png_as_dcm, format="PNG")
    loaded = read_file(png_as_dcm)
    assert loaded.meta.source_format == "png"
    np.testing.assert_array_equal(loaded.frames[0], grey)
    assert loaded.meta.notes == ("named .dcm but the content is PNG",)


@needs_samples
def test_dicom_without_extension_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "IM000001"  # as PACS exports often name them
    path.write_bytes(sample("color3d_jpeg_baseline.dcm").read_bytes())
    loaded = read_file(path)
    assert len(loaded.frames) == 16 and loaded.meta.n_frames_total == 120  # default 16
    assert not any(n.startswith("named") for n in loaded.meta.notes)


@needs_samples
@pytest.mark.parametrize("name", sorted(SAMPLES) or ["(none)"])
def test_every_pydicom_data_file_is_read_or_rejected_cleanly(name: str) -> None:
    path = sample(name)
    if name in US_NAMES:
        loaded = read_file(path)
        assert loaded.frames and all(f.dtype == np.uint8 and f.ndim == 2 for f in loaded.frames)
    elif name == "emri_small_jpeg_2k_lossless_too_short.dcm":
        # Truncated, and an MR: the modality is the reason a person needs first.
        with (
            pytest.raises(NotUltrasoundError, match=r"MR \(Magnetic Resonance\)"),
            pytest.warns(UserWarning, match="End of file"),
        ):
            read_file(path)
    else:
        with pytest.raises(NotUltrasoundError):
            read_file(path)


@needs_samples
@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the damaged values
def test_damaged_copies_are_read_or_rejected_never_crash(tmp_path: Path) -> None:
    """Truncations and flipped bytes: the outcome is frames or an InputError, nothing else."""
    rng = np.random.default_rng(11)
    outcomes: set[str] = set()
    for name in ["OBXXXX1A.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", "US1_J2KR.dcm"]:
        data = sample(name).read_bytes()
        for k in range(12):
            damaged = bytearray(data[: int(rng.integers(1, len(data)))] if k % 2 else data)
            for pos in rng.integers(132, min(len(damaged), 6000), size=8 if k % 2 == 0 else 0):
                damaged[int(pos)] = int(rng.integers(0, 256))
            path = tmp_path / f"{k}_{name}"
            path.write_bytes(bytes(damaged))
            try:
                loaded = read_file(path)
                outcomes.add("read")
                assert all(f.dtype == np.uint8 and f.ndim == 2 for f in loaded.frames)
            except InputError as exc:
                outcomes.add(exc.code)
                assert exc.reason and exc.path == path
    assert "corrupt" in outcomes


def test_random_bytes_named_dcm(tmp_path: Path) -> None:
    path = tmp_path / "random_bytes.dcm"
    path.write_bytes(np.random.default_rng(5).bytes(4096))
    with pytest.raises(UnsupportedFormatError) as info:
        read_file(path)
    reason = info.value.reason
    assert reason.startswith(
        "the content is not a DICOM, PNG, JPEG or BMP image (it looks like unrecognised "
        "binary data): export"
    )
    assert "random_bytes" not in reason
    assert info.value.code == "unsupported_format"


def test_text_named_png(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_bytes(b"Patient called, exam rescheduled. Not an image.\n")
    with pytest.raises(UnsupportedFormatError) as info:
        read_file(path)
    assert info.value.reason.startswith(
        "the content is not a DICOM, PNG, JPEG or BMP image (it looks like text)"
    )
    assert "Patient" not in info.value.reason and "notes" not in info.value.reason


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.dcm"
    path.write_bytes(b"")
    with pytest.raises(EmptyFileError) as info:
        read_file(path)
    assert "the file is empty (0 bytes); the export probably failed: export it again" in (
        info.value.reason
    )


@needs_samples
@pytest.mark.filterwarnings("ignore:End of file reached")
def test_first_half_of_a_real_ultrasound_file(tmp_path: Path) -> None:
    data = sample("JPGLosslessP14SV1_1s_1f_8b.dcm").read_bytes()
    path = tmp_path / "truncated.dcm"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="truncated"):
        read_file(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UnreadableFileError) as info:
        read_file(tmp_path / "vanished.dcm")
    assert info.value.reason.startswith("the file no longer exists")
    assert info.value.code == "unreadable"


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="running as root, which may read any file whatever its permissions",
)
def test_permission_denied(tmp_path: Path) -> None:
    import getpass

    path = tmp_path / "locked.dcm"
    path.write_bytes(bytes(128) + b"DICM")
    path.chmod(0)
    try:
        with pytest.raises(UnreadableFileError) as info:
            read_file(path)
    finally:
        path.chmod(0o600)
    assert f"FAME Node runs as user '{getpass.getuser()}'" in info.value.reason


@needs_samples
def test_the_input_file_is_never_modified(tmp_path: Path) -> None:
    path = tmp_path / "copy.dcm"
    path.write_bytes(sample("OBXXXX1A_rle_2frame.dcm").read_bytes())
    before = (path.read_bytes(), path.stat().st_mtime_ns, path.stat().st_mode)
    read_file(path)
    assert (path.read_bytes(), path.stat().st_mtime_ns, path.stat().st_mode) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.dcm"]  # nothing written


@needs_samples
def test_sample_data_headers_say_us() -> None:
    for path in ultrasound_sample_files():
        assert pydicom.dcmread(path, stop_before_pixels=True).Modality == "US"
    assert all(p.is_file() and p.parent.name == "data" for p in pydicom_data_files())
