"""PNG, JPEG and BMP files to one greyscale frame, and the helpers every reader shares.

`read_image` reads the header first (Pillow's `Image.open` is lazy), refuses images over
`max_pixels` before any pixel is decoded (Pillow's own decompression-bomb limit,
`PIL.Image.MAX_IMAGE_PIXELS`, is left as it is and also refuses: its warning is turned
into an error for this call), then converts the pixels to 8-bit greyscale with
Pillow's `convert("L")` semantics (ITU-R 601-2 luma; alpha is ignored; palettes go through
their RGB colours; 1-bit becomes 0/255). 16- and 32-bit greyscale is rescaled over its own
range (min-max) to 0..255. EXIF orientation is applied. Plain images carry no calibration:
`pixel_spacing_mm` is None (PNG pHYs is a print resolution, not a physical scale).

Shared helpers, used by the DICOM reader as well:

* `open_input` opens the file for reading and turns OS errors and empty files into
  `UnreadableFileError` / `EmptyFileError` with a reason a person can act on;
* `rgb_to_grey` is Pillow's exact luma (ITU-R 601-2 weights 299/587/114 in 16.16 fixed
  point, rounded), so a DICOM and a PNG of the same picture give the same grey;
* `rescale_to_uint8` maps any range to 0..255 (min-max, jointly over several frames).
"""

from __future__ import annotations

import getpass
import os
import struct
import warnings
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray
from PIL import ExifTags, Image, ImageOps

from appliance.errors import (
    CorruptFileError,
    EmptyFileError,
    ImageTooLargeError,
    UnreadableFileError,
    UnsupportedFormatError,
)
from appliance.io.types import Frame, ImageMeta, LoadedImage

MAX_SIDE = 32768
"""Largest accepted number of rows or columns, whatever `max_pixels` allows."""

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "bmp": "BMP"}
# Sizes of the BMP DIB headers Pillow reads (core, v2/v3 info, OS/2 v2, v4, v5).
_BMP_HEADER_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}
# Pillow modes whose pixels are wider than 8 bits: rescaled min-max instead of convert("L").
_WIDE_MODES = {"I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
# Pillow raises these for undecodable or truncated content (UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, struct.error)


# --- shared file helpers ------------------------------------------------------------------


def _node_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in the environment or the password database
        return f"uid {os.getuid()}"


def unreadable_error(path: Path, exc: OSError) -> UnreadableFileError:
    """The `UnreadableFileError` for an OS error raised while opening or reading `path`."""
    name = path.name
    if isinstance(exc, FileNotFoundError):
        reason = (
            f"{name}: the file no longer exists (it was moved or deleted before FAME Node could "
            "read it); if it was still being copied, drop it again once the copy is complete"
        )
    elif isinstance(exc, PermissionError):
        reason = (
            f"{name}: permission denied: FAME Node runs as user '{_node_user()}', which may "
            "not read this file; grant that user read access (for example chmod o+r, or add it "
            "to the file's group) and drop the file again"
        )
    elif isinstance(exc, IsADirectoryError):
        reason = f"{name}: this is a folder, not a file; drop the image files themselves"
    else:
        detail = exc.strerror or str(exc) or type(exc).__name__
        reason = (
            f"{name}: the file could not be read ({detail}); check the disk or network share "
            "and drop the file again"
        )
    return UnreadableFileError(reason, path=path)


@contextmanager
def open_input(path: Path) -> Iterator[IO[bytes]]:
    """Open `path` for binary reading; OS errors and a 0-byte file become `InputError`s.

    Only OS errors raised while opening and measuring the file are translated; errors
    raised by the caller's own code inside the block pass through unchanged.
    """
    try:
        fh = path.open("rb")
        size = os.fstat(fh.fileno()).st_size
    except OSError as exc:
        raise unreadable_error(path, exc) from exc
    with fh:
        if size == 0:
            raise EmptyFileError(
                f"{path.name}: the file is empty (0 bytes); the export probably failed: "
                "export it again",
                path=path,
            )
        yield fh


def read_head(fh: IO[bytes], path: Path, n: int = 132) -> bytes:
    """The first `n` bytes of an open file (fewer if it is shorter); rewinds to the start."""
    try:
        head = fh.read(n)
        fh.seek(0)
    except OSError as exc:
        raise unreadable_error(path, exc) from exc
    return head


def describe_head(head: bytes) -> str:
    """The first bytes of a file, printable whatever they are (Python bytes repr)."""
    return repr(head[:16]) + ("..." if len(head) > 16 else "")


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
            f"{path.name}: the image is {what}; FAME Node accepts at most {MAX_SIDE} pixels "
            "per side: export it at a lower resolution",
            path=path,
        )
    total = rows * cols * n_frames
    if total > max_pixels:
        raise ImageTooLargeError(
            f"{path.name}: the image is {what} = {total:,} pixels to decode, more than the "
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
        f"{path.name}: the {fmt.upper()} header announces {dims}, beyond Pillow's "
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


def read_image(path: Path, *, max_pixels: int) -> LoadedImage:
    """Read a PNG, JPEG or BMP file as one greyscale uint8 frame.

    Raises
    ------
    EmptyFileError, UnreadableFileError
        The file is empty, vanished, or may not be read.
    UnsupportedFormatError
        The content is not PNG, JPEG or BMP (whatever the file is named).
    ImageTooLargeError
        The header announces more than `max_pixels` pixels or a side over 32768.
    CorruptFileError
        The content cannot be decoded (truncated, damaged).
    """
    with open_input(path) as fh:
        head = read_head(fh, path, 32)
        fmt = sniff_image_format(head)
        if fmt is None:
            raise UnsupportedFormatError(
                f"{path.name}: the content is not a PNG, JPEG or BMP image (it begins with "
                f"{describe_head(head)}): export the image again as PNG, JPEG, BMP or DICOM",
                path=path,
            )
        try:
            # Pillow warns, then refuses, past Image.MAX_IMAGE_PIXELS: both become refusals
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(fh, formats=[_PIL_FORMATS[fmt]])
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb_error(path, fh, fmt, max_pixels) from exc
        except _DECODE_ERRORS as exc:
            raise CorruptFileError(
                f"{path.name}: the {fmt.upper()} header cannot be read ({exc}); the file is "
                "damaged: export it again",
                path=path,
            ) from exc
        with im:
            cols, rows = im.size
            check_dimensions(path, rows, cols, 1, max_pixels)
            n_frames = getattr(im, "n_frames", 1)
            mode = im.mode
            try:
                im.load()
                orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
                upright = ImageOps.exif_transpose(im)
                frame, bits = _to_grey(upright)
            except _DECODE_ERRORS as exc:
                raise CorruptFileError(
                    f"{path.name}: the {fmt.upper()} pixel data cannot be decoded ({exc}); "
                    "the file is truncated or damaged: export it again",
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
