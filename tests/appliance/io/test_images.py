"""PNG / JPEG / BMP reader and the shared greyscale helpers, on files written by Pillow."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from appliance.errors import (
    CorruptFileError,
    EmptyFileError,
    ImageTooLargeError,
    UnreadableFileError,
    UnsupportedFormatError,
)
from appliance.io.files import unreadable_error
from appliance.io.images import read_image, rescale_to_uint8, rgb_to_grey, sniff_image_format
from appliance.io.integrity import TRUNCATED

LIMIT = 50_000_000
RNG = np.random.default_rng(2024)


def pillow_grey(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("L"))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header (8-bit greyscale IHDR) claiming width x height, and a token IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(bytes(64))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


# --- pure helpers -------------------------------------------------------------------------


def test_rgb_to_grey_is_pillows_convert_l() -> None:
    rgb = RNG.integers(0, 256, size=(512, 512, 3), dtype=np.uint8)
    rgb[0, :8] = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255],
                  [1, 2, 3], [128, 128, 128], [254, 1, 127]]  # fmt: skip
    np.testing.assert_array_equal(rgb_to_grey(rgb), pillow_grey(rgb))
    # ITU-R 601-2: pure red, green and blue
    assert rgb_to_grey(np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)).tolist() == [
        [76, 150, 29]
    ]


def test_rgb_to_grey_ignores_alpha_as_pillow_does() -> None:
    rgba = RNG.integers(0, 256, size=(64, 64, 4), dtype=np.uint8)
    np.testing.assert_array_equal(rgb_to_grey(rgba), pillow_grey(rgba))
    np.testing.assert_array_equal(rgb_to_grey(rgba), rgb_to_grey(rgba[..., :3]))


def test_rgb_to_grey_refuses_other_shapes_and_types() -> None:
    with pytest.raises(ValueError, match="expects"):
        rgb_to_grey(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        rgb_to_grey(np.zeros((4, 4, 3), np.uint16))


def test_rescale_to_uint8_is_joint_over_frames() -> None:
    a = np.array([[100, 200]], dtype=np.uint16)
    b = np.array([[300, 500]], dtype=np.uint16)
    out = rescale_to_uint8([a, b])
    assert out[0].tolist() == [[0, 64]] and out[1].tolist() == [[128, 255]]
    assert all(o.dtype == np.uint8 for o in out)
    assert rescale_to_uint8([np.full((2, 2), 7, np.int32)])[0].tolist() == [[0, 0], [0, 0]]
    assert rescale_to_uint8([]) == []


def test_sniff_image_format() -> None:
    assert sniff_image_format(b"\x89PNG\r\n\x1a\n" + bytes(8)) == "png"
    assert sniff_image_format(b"\xff\xd8\xff\xe0" + bytes(8)) == "jpeg"
    assert sniff_image_format(b"BM" + bytes(12) + b"\x28\x00\x00\x00") == "bmp"
    assert sniff_image_format(b"BMW and other cars") is None  # "BM" alone is not enough
    assert sniff_image_format(b"hello") is None


# --- files written by Pillow --------------------------------------------------------------


def test_png_8bit_grey_is_exact(tmp_path: Path) -> None:
    grey = RNG.integers(0, 256, size=(40, 60), dtype=np.uint8)
    path = tmp_path / "grey.png"
    Image.fromarray(grey).save(path)
    loaded = read_image(path, max_pixels=LIMIT)
    assert len(loaded.frames) == 1
    np.testing.assert_array_equal(loaded.frames[0], grey)
    meta = loaded.meta
    assert meta.source_format == "png" and meta.photometric == "L" and meta.bits_stored == 8
    assert meta.pixel_spacing_mm is None and meta.crop is None and meta.modality is None
    assert meta.frame_indices == (0,) and meta.n_frames_total == 1 and meta.notes == ()


def test_png_16bit_grey_is_rescaled_min_max(tmp_path: Path) -> None:
    grey = RNG.integers(1000, 40000, size=(30, 50), dtype=np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(grey).save(path)
    loaded = read_image(path, max_pixels=LIMIT)
    lo, hi = float(grey.min()), float(grey.max())
    expected = np.rint((grey.astype(float) - lo) * 255 / (hi - lo))
    np.testing.assert_array_equal(loaded.frames[0], expected)
    assert loaded.meta.bits_stored == 16 and str(loaded.meta.photometric).startswith("I")


@pytest.mark.parametrize(("mode", "fmt"), [("RGB", "png"), ("RGBA", "png"), ("RGB", "bmp")])
def test_colour_is_pillow_luma(tmp_path: Path, mode: str, fmt: str) -> None:
    pixels = RNG.integers(0, 256, size=(32, 48, len(mode)), dtype=np.uint8)
    path = tmp_path / f"colour.{fmt}"
    Image.fromarray(pixels, mode).save(path)
    loaded = read_image(path, max_pixels=LIMIT)
    np.testing.assert_array_equal(loaded.frames[0], rgb_to_grey(pixels[..., :3]))
    assert loaded.meta.source_format == fmt and loaded.meta.photometric == mode
    assert f"converted {mode} to greyscale" in loaded.meta.notes


def test_grey_with_alpha_keeps_the_grey(tmp_path: Path) -> None:
    la = RNG.integers(0, 256, size=(16, 16, 2), dtype=np.uint8)
    path = tmp_path / "la.png"
    Image.fromarray(la, "LA").save(path)
    np.testing.assert_array_equal(read_image(path, max_pixels=LIMIT).frames[0], la[..., 0])


def test_palette_png_goes_through_its_colours(tmp_path: Path) -> None:
    palette = RNG.integers(0, 256, size=(256, 3), dtype=np.uint8)
    index = RNG.integers(0, 256, size=(20, 30), dtype=np.uint8)
    im = Image.fromarray(index, "L").convert("P")
    im.putpalette(palette.ravel().tolist())
    path = tmp_path / "palette.png"
    im.save(path)
    loaded = read_image(path, max_pixels=LIMIT)
    np.testing.assert_array_equal(loaded.frames[0], rgb_to_grey(palette[index]))
    assert loaded.meta.photometric == "P"


def test_one_bit_png_is_0_and_255(tmp_path: Path) -> None:
    bits = RNG.integers(0, 2, size=(10, 12)).astype(bool)
    path = tmp_path / "bits.png"
    Image.fromarray(bits).save(path)
    loaded = read_image(path, max_pixels=LIMIT)
    np.testing.assert_array_equal(loaded.frames[0], np.where(bits, 255, 0))
    assert loaded.meta.bits_stored == 1


def test_bmp_grey_is_exact(tmp_path: Path) -> None:
    grey = RNG.integers(0, 256, size=(25, 35), dtype=np.uint8)
    path = tmp_path / "grey.bmp"
    Image.fromarray(grey).save(path)
    loaded = read_image(path, max_pixels=LIMIT)
    np.testing.assert_array_equal(loaded.frames[0], grey)
    assert loaded.meta.source_format == "bmp"


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_jpeg_is_what_pillow_decodes(tmp_path: Path, mode: str) -> None:
    yy, xx = np.mgrid[0:64, 0:96]
    smooth = ((xx * 2 + yy) % 256).astype(np.uint8)
    pixels = smooth if mode == "L" else np.dstack([smooth, smooth // 2, 255 - smooth])
    path = tmp_path / "photo.jpg"
    Image.fromarray(pixels, mode).save(path, quality=95)
    loaded = read_image(path, max_pixels=LIMIT)
    with Image.open(path) as im:
        np.testing.assert_array_equal(loaded.frames[0], np.asarray(im.convert("L")))
    source_grey = pixels if mode == "L" else rgb_to_grey(pixels)
    assert np.abs(loaded.frames[0].astype(int) - source_grey).mean() < 3  # lossy, but close
    assert loaded.meta.source_format == "jpeg"


def test_jpeg_exif_orientation_is_applied(tmp_path: Path) -> None:
    grey = np.zeros((20, 40), np.uint8)
    grey[:, :5] = 255  # a bright band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display turned 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    Image.fromarray(grey).save(path, exif=exif, quality=95)
    loaded = read_image(path, max_pixels=LIMIT)
    assert loaded.frames[0].shape == (40, 20)
    assert loaded.frames[0][:5].mean() > 200  # the band is now at the top
    assert "turned upright from its EXIF orientation (6)" in loaded.meta.notes


# --- rejections ---------------------------------------------------------------------------


def test_huge_png_header_is_refused_with_its_dimensions(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"  # 10^10 pixels: Pillow's decompression-bomb error
    path.write_bytes(png_header_only(100_000, 100_000))
    with pytest.raises(ImageTooLargeError) as info:
        read_image(path, max_pixels=LIMIT)
    assert "100000 x 100000 pixels" in info.value.reason


@pytest.mark.parametrize(
    ("width", "height", "limit", "expected"),
    [
        (10_000, 10_000, LIMIT, "10000 x 10000 pixels = 100,000,000"),  # Pillow only warns
        (3_000, 2_000, 1_000_000, "3000 x 2000 pixels = 6,000,000"),
        (40_000, 10, LIMIT, "at most 32768 pixels per side"),
        # a configured limit above Pillow's own: Pillow's limit still applies
        (10_000, 10_000, 200_000_000, "decompression-bomb limit of 89,478,485 pixels"),
    ],
)
def test_large_headers_are_refused_before_decoding(
    tmp_path: Path, width: int, height: int, limit: int, expected: str
) -> None:
    path = tmp_path / "large.png"  # no pixel data at all: only the header is read
    path.write_bytes(png_header_only(width, height))
    with pytest.raises(ImageTooLargeError) as info:
        read_image(path, max_pixels=limit)
    assert expected in info.value.reason


def test_truncated_png(tmp_path: Path) -> None:
    noise = RNG.integers(0, 256, size=(200, 200, 3), dtype=np.uint8)
    full = tmp_path / "full.png"
    Image.fromarray(noise).save(full)
    path = tmp_path / "cut.png"
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CorruptFileError) as info:
        read_image(path, max_pixels=LIMIT)
    assert info.value.reason == TRUNCATED
    assert "cut.png" not in info.value.reason


def test_text_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("Patient called, exam rescheduled.\n")
    with pytest.raises(UnsupportedFormatError) as info:
        read_image(path, max_pixels=LIMIT)
    assert "not a PNG, JPEG or BMP image (it looks like text)" in info.value.reason
    assert "Patient" not in info.value.reason  # never the content


def test_empty_missing_and_folder(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(EmptyFileError, match=r"empty \(0 bytes\)"):
        read_image(empty, max_pixels=LIMIT)
    with pytest.raises(UnreadableFileError, match="no longer exists"):
        read_image(tmp_path / "gone.png", max_pixels=LIMIT)
    with pytest.raises(UnreadableFileError, match="folder"):
        read_image(tmp_path, max_pixels=LIMIT)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="running as root, which may read any file whatever its permissions",
)
def test_permission_denied_names_the_user(tmp_path: Path) -> None:
    import getpass

    path = tmp_path / "locked.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)
    path.chmod(0)
    try:
        with pytest.raises(UnreadableFileError) as info:
            read_image(path, max_pixels=LIMIT)
    finally:
        path.chmod(0o600)
    assert f"runs as user '{getpass.getuser()}'" in info.value.reason
    assert "grant that user read access" in info.value.reason


def test_unreadable_reasons_name_the_cause(tmp_path: Path) -> None:
    """The messages themselves, for causes a test cannot provoke as root (or at all)."""
    import getpass

    path = tmp_path / "scan.dcm"
    denied = unreadable_error(path, PermissionError(13, "Permission denied"))
    assert denied.reason == (
        f"permission denied: FAME Node runs as user '{getpass.getuser()}', which may "
        "not read this file; grant that user read access (for example chmod o+r, or add it "
        "to the file's group) and drop the file again"
    )
    io_error = unreadable_error(path, OSError(5, "Input/output error"))
    assert io_error.reason.startswith("the file could not be read (Input/output error)")
    named = unreadable_error(path, OSError(5, "Input/output error", str(path)))
    assert "scan.dcm" not in named.reason  # str(exc) would carry the path
    assert denied.path == io_error.path == path and denied.code == "unreadable"
