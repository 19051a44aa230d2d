"""Cut and damaged PNG / JPEG / BMP files are refused before Pillow decodes them.

Real files written by Pillow (and BUSI's, and the JPEG codestreams inside pydicom-data's
DICOMs), damaged at the byte level: one CRC, a cut before IEND, entropy-coded data cut
short. Before this check Pillow decoded a PNG with a bad IDAT CRC and a PNG cut just
before IEND without a word (hostile kinds png_bad_crc and slow_writer).
"""

from __future__ import annotations

import csv
import io
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import generate_frames

from appliance.errors import CorruptFileError, ImageTooLargeError
from appliance.io.images import read_image
from appliance.io.integrity import TRUNCATED, check_png, jpeg_has_eoi
from appliance.io.reader import read_file
from tests.appliance.io.samples import SAMPLES
from tests.conftest import BUSI_DIR, BUSI_MANIFEST, needs_busi

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def speckle(rows: int = 240, cols: int = 320, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(30, 200, cols)[None, :] + rng.normal(0, 25, (rows, cols))
    return np.clip(ramp, 0, 255).astype(np.uint8)


def encode(fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(speckle()).save(buf, fmt, **params)
    return buf.getvalue()


def chunks(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """(offset, type, payload) of each chunk of a well-formed PNG."""
    out, pos = [], len(SIGNATURE)
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        out.append((pos, data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def with_bad_crc(data: bytes, kind: bytes, nth: int = 0) -> bytes:
    """`data` with the CRC of its `nth` chunk of type `kind` flipped (nothing else changed)."""
    pos, _, payload = [c for c in chunks(data) if c[1] == kind][nth]
    at = pos + 8 + len(payload)
    crc = int.from_bytes(data[at : at + 4], "big") ^ 0x5A5A
    return data[:at] + crc.to_bytes(4, "big") + data[at + 4 :]


def refusal(tmp_path: Path, data: bytes, name: str = "DOE^JANE_MRN123.png") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(CorruptFileError) as info:
        read_file(path)
    assert "DOE" not in info.value.reason and "MRN" not in info.value.reason
    return info.value.reason


# --- PNG: CRCs --------------------------------------------------------------------------


def test_png_with_a_bad_idat_crc_is_refused_as_damaged(tmp_path: Path) -> None:
    good = encode("PNG")
    reason = refusal(tmp_path, with_bad_crc(good, b"IDAT"))
    assert reason == (
        "the PNG file is damaged (chunk 2 (IDAT) fails its CRC check), as by a disk or "
        "transfer error: export it again from the ultrasound system or PACS"
    )


def test_a_bad_crc_in_a_later_idat_or_after_the_pixels_is_found(tmp_path: Path) -> None:
    # Pillow splits large images into several IDAT chunks; a text chunk after IDAT is read
    # by Pillow only at the end of decoding, if at all
    big = Image.fromarray(np.random.default_rng(0).integers(0, 256, (700, 800), np.uint8))
    buf = io.BytesIO()
    big.save(buf, "PNG")
    data = buf.getvalue()
    idats = [c for c in chunks(data) if c[1] == b"IDAT"]
    assert len(idats) > 3
    assert "IDAT) fails its CRC" in refusal(tmp_path, with_bad_crc(data, b"IDAT", len(idats) - 1))
    iend = chunks(data)[-1][0]
    text = struct.pack(">I", 5) + b"tEXtab\x00cd" + struct.pack(">I", 0xDEADBEEF)
    assert "(tEXt) fails its CRC" in refusal(tmp_path, data[:iend] + text + data[iend:])


def test_unknown_chunk_types_are_not_quoted(tmp_path: Path) -> None:
    data = encode("PNG")
    iend = chunks(data)[-1][0]
    private = struct.pack(">I", 4) + b"prVtSECR" + struct.pack(">I", 1)  # wrong CRC
    reason = refusal(tmp_path, data[:iend] + private + data[iend:])
    assert "prVt" not in reason and "SECR" not in reason
    assert f"chunk {len(chunks(data))} fails its CRC" in reason


# --- PNG: cut short ----------------------------------------------------------------------


def test_png_cut_just_before_iend_is_still_being_written(tmp_path: Path) -> None:
    good = encode("PNG")
    assert refusal(tmp_path, good[:-12]) == TRUNCATED  # Pillow decodes this one in full


def test_png_cut_anywhere_is_truncated_and_the_whole_file_reads(tmp_path: Path) -> None:
    good = encode("PNG")
    ends = {pos for pos, _, _ in chunks(good)}
    cuts = sorted(ends | {e + 3 for e in ends} | {e + 10 for e in ends} | {len(good) - 1})
    for cut in (c for c in cuts if len(SIGNATURE) < c < len(good)):
        assert refusal(tmp_path, good[:cut]) == TRUNCATED, cut
    path = tmp_path / "whole.png"
    path.write_bytes(good + b"\x00" * 100)  # bytes after IEND are ignored, as viewers do
    np.testing.assert_array_equal(read_image(path).frames[0], speckle())


def test_check_png_streams_and_leaves_the_position(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(encode("PNG"))
    with path.open("rb", buffering=0) as fh:
        fh.seek(33)
        check_png(fh, path)
        assert fh.tell() == 33


@needs_busi
def test_every_busi_png_passes() -> None:
    with BUSI_MANIFEST.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    paths = {BUSI_DIR / r["image"] for r in rows} | {
        BUSI_DIR / m for r in rows for m in r["masks"].split(";") if m
    }
    assert len(paths) > 1500
    for path in sorted(paths):
        with path.open("rb", buffering=0) as fh:
            check_png(fh, path)  # raises on any bad CRC or missing IEND


# --- JPEG ----------------------------------------------------------------------------------


@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_cut_in_its_entropy_coded_data_is_truncated(tmp_path: Path, progressive: bool) -> None:
    good = encode("JPEG", quality=90, progressive=progressive)
    for fraction in (0.3, 0.6, 0.95):
        assert refusal(tmp_path, good[: int(len(good) * fraction)]) == TRUNCATED
    assert refusal(tmp_path, good[:-2]) == TRUNCATED  # only the EOI marker missing
    path = tmp_path / "trailer.jpg"
    path.write_bytes(good + b"trailing data a camera appended" * 8)  # after EOI: fine
    assert read_image(path).frames[0].shape == (240, 320)


def test_an_exif_thumbnails_eoi_does_not_complete_a_cut_jpeg(tmp_path: Path) -> None:
    thumb = encode("JPEG", quality=50)  # a whole JPEG, EOI included
    app1 = b"Exif\x00\x00" + thumb
    segment = b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1
    good = encode("JPEG", quality=90)
    with_thumb = good[:2] + segment + good[2:]
    assert jpeg_has_eoi(with_thumb)
    assert not jpeg_has_eoi(with_thumb[: len(segment) + len(good) // 2])
    assert refusal(tmp_path, with_thumb[: len(segment) + len(good) // 2]) == TRUNCATED


JPEG_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                 "1.2.840.10008.1.2.4.70"}  # fmt: skip


def test_real_jpeg_codestreams_reach_eoi() -> None:
    """Every JPEG frame in pydicom-data (real encoders: GE, Philips, gdcm...) has its EOI."""
    streams = 0
    for path in SAMPLES.values():
        ds = pydicom.dcmread(path, force=True)
        tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if tsyntax not in JPEG_SYNTAXES or "PixelData" not in ds:
            continue
        n_frames = int(ds.get("NumberOfFrames") or 1)
        for frame in generate_frames(ds.PixelData, number_of_frames=n_frames):
            assert jpeg_has_eoi(frame), path.name
            assert not jpeg_has_eoi(frame[: len(frame) * 2 // 3]), path.name
            streams += 1
    if not streams:
        pytest.skip("pydicom-data is not installed")


# --- BMP ------------------------------------------------------------------------------------


def test_bmp_shorter_than_its_pixel_data_is_truncated(tmp_path: Path) -> None:
    good = encode("BMP")
    for cut in (len(good) - 1, len(good) // 2, 60):
        assert refusal(tmp_path, good[:cut]) == TRUNCATED
    path = tmp_path / "whole.bmp"
    path.write_bytes(good)
    np.testing.assert_array_equal(read_image(path).frames[0], speckle())


def test_a_bmp_announcing_too_many_pixels_is_too_large_not_truncated(tmp_path: Path) -> None:
    info = struct.pack("<IiiHHIIiiII", 40, 1_000_000, 1_000_000, 1, 24, 0, 0, 2835, 2835, 0, 0)
    header = struct.pack("<2sIHHI", b"BM", 14 + len(info) + 10, 0, 0, 14 + len(info))
    path = tmp_path / "bomb.bmp"
    path.write_bytes(header + info + bytes(10))
    with pytest.raises(ImageTooLargeError):
        read_file(path)
