"""PNG, JPEG and BMP files to one greyscale frame, and the helpers every reader shares.

`read_image` reads the header first (Pillow's `Image.open` is lazy), refuses images over
`max_pixels` before any pixel is decoded (Pillow's own decompression-bomb limit,
`PIL.Image.MAX_IMAGE_PIXELS`, is left as it is and also refuses: its warning is turned
into an error for this call), then converts the pixels to 8-bit greyscale with
Pillow's `convert("L")` semantics (ITU-R 601-2 luma; alpha is ignored; palettes go through
their RGB colours; 1-bit becomes 0/255). 16- and 32-bit greyscale is rescaled over its own
range (min-max) to 0..255. EXIF orientation is applied. Plain images carry no calibration:
`pixel_spacing_mm` is None (PNG pHYs is a print resolution, not a physical scale).

Before any pixel is decoded, the file must be whole and undamaged
(`appliance.io.integrity`): every PNG chunk's CRC (Pillow skips those of IDAT) and its
IEND, a JPEG's EOI, a BMP's announced pixel data; a cut file is "still being written".

JPEG files are refused before decoding when they hold more than `max_jpeg_scans` scans
(`appliance.io.bounds.jpeg_scan_count`): each scan of a progressive JPEG is a full pass
over the image, and a few thousand make a small file decode for minutes.

Shared helpers, used by the DICOM reader as well (files are opened by
`appliance.io.files.open_input`):

* `rgb_to_grey` is Pillow's exact luma (ITU-R 601-2 weights 299/587/114 in 16.16 fixed
  point, rounded), so a DICOM and a PNG of the same picture give the same grey;
* `rescale_to_uint8` maps any range to 0..255 (min-max, jointly over several frames).
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray
from PIL import ExifTags, Image, ImageOps

from appliance.errors import (
    CorruptFileError,
    ImageTooLargeError,
    InputTooCostlyError,
    UnsupportedFormatError,
)
from appliance.io.bounds import describe_content, jpeg_scan_count, resolve_limits, scan_refusal
from appliance.io.files import open_input, read_all, read_head, unreadable_error
from appliance.io.integrity import check_bmp, check_jpeg, check_png
from appliance.io.types import Frame, ImageMeta, LoadedImage, ReadLimits

MAX_SIDE = 32768
"""Largest accepted number of rows or columns, whatever `max_pixels` allows."""

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "bmp": "BMP"}
# Sizes of the BMP DIB headers Pillow reads (core, v2/v3 info, OS/2 v2, v4, v5).
_BMP_HEADER_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}
# Pillow modes whose pixels are wider than 8 bits: rescaled min-max instead of convert("L").
_WIDE_MODES = {"I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
# Pillow raises these for undecodable or truncated content (UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, struct.error)


# --- shared helpers -----------------------------------------------------------------------


def sniff_image_format(head: bytes) -> str | None:
    """ "png", "jpeg" or "bmp" from a file's magic bytes, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    dib_header_size = int.from_bytes(head[14:18], "little") if len(head) >= 18 else 0
    if head.startswith(b"BM") and dib_header_size in _BMP_HEADER_SIZES:
        return "bmp"
    return None


# --- pure pixel helpers -------------------------------------------------------------------


def rgb_to_grey(rgb: NDArray[Any]) -> Frame:
    """8-bit (..., 3 or 4) RGB(A) to greyscale exactly as Pillow's `convert("L")` does.

    L = R*299/1000 + G*587/1000 + B*114/1000 (ITU-R 601-2), computed as Pillow does in
    16.16 fixed point with rounding; an alpha channel is ignored.
    """
    if rgb.ndim < 3 or rgb.shape[-1] not in (3, 4):
        raise ValueError(f"rgb_to_grey expects (..., 3) or (..., 4) pixels, got {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"rgb_to_grey expects uint8 pixels, got {rgb.dtype}")
    c = rgb.astype(np.uint32)
    grey = (c[..., 0] * 19595 + c[..., 1] * 38470 + c[..., 2] * 7471 + 0x8000) >> 16
    return grey.astype(np.uint8)


def rescale_to_uint8(arrays: Sequence[NDArray[Any]]) -> list[Frame]:
    """Map arrays jointly (one min and max over all of them) onto 0..255.

    Joint scaling keeps the frames of a cine comparable. A constant input gives zeros.
    """
    if not arrays:
        return []
    lo = min(float(np.min(a)) for a in arrays)
    hi = max(float(np.max(a)) for a in arrays)
    if hi <= lo:
        return [np.zeros(a.shape, dtype=np.uint8) for a in arrays]
    span = hi - lo
    return [
        np.clip(np.rint((a.astype(np.float64) - lo) * 255.0 / span), 0, 255).astype(np.uint8)
        for a in arrays
    ]


def check_dimensions(path: Path, rows: int, cols: int, n_frames: int, max_pixels: int) -> None:
    """Raise `ImageTooLargeError` when rows x cols x n_frames or a side is beyond the limits."""
    what = f"{cols} x {rows} pixels" + (f" x {n_frames} frames" if n_frames > 1 else "")
    if rows > MAX_SIDE or cols > MAX_SIDE:
        raise ImageTooLargeError(
            f"the image is {what}; FAME Node accepts at most {MAX_SIDE} pixels "
            "per side: export it at a lower resolution",
            path=path,
        )
    total = rows * cols * n_frames
    if total > max_pixels:
        raise ImageTooLargeError(
            f"the image is {what} = {total:,} pixels to decode, more than the "
            f"configured limit of {max_pixels:,} (max_image_pixels): export it at a lower "
            "resolution or with fewer frames, or raise the limit",
            path=path,
        )


# --- PNG / JPEG / BMP ---------------------------------------------------------------------


def _size_without_bomb_check(fh: IO[bytes], fmt: str) -> tuple[int, int] | None:
    """Header size of an image Pillow refused as a decompression bomb, or None."""
    entry = Image.OPEN.get(_PIL_FORMATS[fmt])
    if entry is None:
        return None
    try:
        fh.seek(0)
        with entry[0](fh, "") as im:  # the plugin itself: reads the header, no bomb check
            return im.size
    except _DECODE_ERRORS:
        return None


def _bomb_error(path: Path, fh: IO[bytes], fmt: str, max_pixels: int) -> ImageTooLargeError:
    """The refusal of an image Pillow calls a decompression bomb, with its dimensions."""
    size = _size_without_bomb_check(fh, fmt)
    if size is not None:
        check_dimensions(path, size[1], size[0], 1, max_pixels)  # raises if over our limit
    dims = f"{size[0]} x {size[1]} pixels" if size else "more pixels"
    return ImageTooLargeError(
        f"the {fmt.upper()} header announces {dims}, beyond Pillow's "
        f"decompression-bomb limit of {Image.MAX_IMAGE_PIXELS or 0:,} pixels "
        "(PIL.Image.MAX_IMAGE_PIXELS): export it at a lower resolution",
        path=path,
    )


def _to_grey(im: Image.Image) -> tuple[Frame, int]:
    """One Pillow image to a greyscale uint8 frame; also returns the stored bit depth."""
    if im.mode in _WIDE_MODES:
        arr = np.asarray(im)
        bits = 16 if im.mode.startswith("I;16") else 32
        return rescale_to_uint8([arr])[0], bits
    if im.mode in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "La"):
        grey = im.convert("L")
    else:  # CMYK, YCbCr, LAB, HSV...: through RGB, as a viewer would show it
        grey = im.convert("RGB").convert("L")
    return np.array(grey, dtype=np.uint8), 1 if im.mode == "1" else 8


def _check_whole(fmt: str, fh: IO[bytes], data: bytes, head: bytes, path: Path) -> None:
    """Refuse a cut or damaged file before Pillow decodes it (`appliance.io.integrity`)."""
    try:
        if fmt == "png":
            check_png(fh, path)
        elif fmt == "jpeg":
            check_jpeg(data, path)
        else:
            check_bmp(fh, path, head)
    except OSError as exc:
        raise unreadable_error(path, exc) from exc


def read_image(
    path: Path, *, max_pixels: int | None = None, limits: ReadLimits | None = None
) -> LoadedImage:
    """Read a PNG, JPEG or BMP file as one greyscale uint8 frame.

    `limits` bounds the work (file size, pixels, JPEG scans); `max_pixels` alone is the
    older form, with the other limits at their defaults.

    Raises
    ------
    EmptyFileError, UnreadableFileError, NotRegularFileError
        The file is empty, vanished, may not be read, or is not a regular file.
    UnsupportedFormatError
        The content is not PNG, JPEG or BMP (whatever the file is named).
    ImageTooLargeError
        The file is over `max_bytes`, or the header announces more than `max_pixels`
        pixels or a side over 32768.
    InputTooCostlyError
        A JPEG with more than `max_jpeg_scans` scans.
    CorruptFileError
        The content cannot be decoded, or is cut short or damaged: a PNG chunk whose
        CRC does not match or no IEND, a JPEG without EOI, a BMP shorter than its pixel
        data (`appliance.io.integrity`).
    """
    limits = resolve_limits(limits, None, max_pixels)
    max_pixels = limits.max_pixels
    with open_input(path, max_bytes=limits.max_bytes) as fh:
        head = read_head(fh, path, 512)
        fmt = sniff_image_format(head)
        if fmt is None:
            raise UnsupportedFormatError(
                "the content is not a PNG, JPEG or BMP image (it looks like "
                f"{describe_content(head)}): export the image again as PNG, JPEG, BMP or DICOM",
                path=path,
            )
        src: IO[bytes] = fh
        data = b""
        if fmt == "jpeg":  # count the scans before Pillow decodes any of them
            data = read_all(fh, path)
            scans = jpeg_scan_count(data, stop_after=limits.max_jpeg_scans)
            if scans > limits.max_jpeg_scans:
                raise InputTooCostlyError(scan_refusal(scans, limits.max_jpeg_scans), path=path)
            src = io.BytesIO(data)
        if fmt != "bmp":  # every chunk's CRC, IEND, EOI: before Pillow reads anything
            _check_whole(fmt, fh, data, head, path)
        try:
            # Pillow warns, then refuses, past Image.MAX_IMAGE_PIXELS: both become refusals
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(src, formats=[_PIL_FORMATS[fmt]])
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb_error(path, src, fmt, max_pixels) from exc
        except _DECODE_ERRORS as exc:
            raise CorruptFileError(
                f"the {fmt.upper()} header cannot be read (Pillow: {type(exc).__name__}); "
                "the file is damaged: export it again",
                path=path,
            ) from exc
        with im:
            cols, rows = im.size
            check_dimensions(path, rows, cols, 1, max_pixels)
            if fmt == "bmp":  # after the size check: a BMP bomb is too large, not cut
                _check_whole(fmt, fh, data, head, path)
            n_frames = getattr(im, "n_frames", 1)
            mode = im.mode
            try:
                im.load()
                orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
                upright = ImageOps.exif_transpose(im)
                frame, bits = _to_grey(upright)
            except _DECODE_ERRORS as exc:
                raise CorruptFileError(
                    f"the {fmt.upper()} pixel data cannot be decoded (Pillow: "
                    f"{type(exc).__name__}); the file is truncated or damaged: export it again",
                    path=path,
                ) from exc
    notes: list[str] = []
    if orientation not in (None, 1):
        notes.append(f"turned upright from its EXIF orientation ({orientation})")
    if n_frames > 1:
        notes.append(f"only the first of {n_frames} frames read")
    if mode not in ("L", "1"):
        notes.append(f"converted {mode} to greyscale")
    meta = ImageMeta(source_format=fmt, photometric=mode, bits_stored=bits, notes=tuple(notes))
    return LoadedImage(frames=[np.ascontiguousarray(frame)], meta=meta)
