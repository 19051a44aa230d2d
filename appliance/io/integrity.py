"""Is a PNG, JPEG or BMP file whole and undamaged? Judged from its structure, before decoding.

Pillow decodes some damaged and incomplete files without a word: it does not check the
CRC of PNG image-data (IDAT) chunks, and a PNG cut just before its IEND chunk decodes
in full (a file still being written was analysed as an image). So, before Pillow:

* `check_png` walks every chunk as the bytes stream by (one pass, bounded memory: data
  is read in pieces of `_BLOCK` bytes), verifies each chunk's CRC-32 over type + data,
  and requires the IEND chunk; bytes after IEND are ignored, as every viewer does;
* `check_jpeg` requires the EOI marker that ends the primary image, found by walking the
  segments by their lengths (an EXIF thumbnail's own EOI inside APP1 does not count) and
  the entropy-coded data to its next marker; bytes after EOI are fine (some cameras and
  viewers append data there);
* `check_bmp` requires the pixel data the header announces (rows x padded row, or the
  header's image size for compressed data) to be in the file.

A cut file is `CorruptFileError` with `TRUNCATED` (it was probably still being written),
a damaged one with a reason that says so. No reason quotes file content or the name.
"""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path
from typing import IO

from appliance.errors import CorruptFileError

TRUNCATED = (
    "the file ends before the end of the image: it was probably still being written or "
    "the export was cut short; drop it again once complete"
)
_BLOCK = 1 << 20  # bytes read at a time while checking a PNG's CRCs
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_MAX_CHUNK = (1 << 31) - 1  # PNG spec: a chunk length is at most 2^31 - 1
# Chunk types named in a reason; any other type (its bytes are the file's) is "a chunk".
_PNG_KNOWN = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB",
              b"iCCP", b"tEXt", b"zTXt", b"iTXt", b"bKGD", b"pHYs", b"sBIT", b"tIME",
              b"acTL", b"fcTL", b"fdAT", b"eXIf"}  # fmt: skip
# A marker that ends entropy-coded data: 0xFF then C0..FE except RST0-7 (D0..D7); 0xFF00
# is byte stuffing, 0xFFFF fill.
_MARKER_AFTER_SCAN = re.compile(rb"\xff[\xc0-\xcf\xd8-\xfe]")
_STANDALONE = {0x01, 0xD8, *range(0xD0, 0xD8)}  # TEM, SOI, RST0-7: no length field


def _damaged(fmt: str, what: str) -> str:
    return (
        f"the {fmt} file is damaged ({what}), as by a disk or transfer error: export it "
        "again from the ultrasound system or PACS"
    )


def check_png(fh: IO[bytes], path: Path) -> None:
    """Raise `CorruptFileError` unless every chunk's CRC matches and IEND is reached.

    Reads `fh` from the start to IEND once, `_BLOCK` bytes at most at a time; leaves the
    position where it was. OSErrors while reading pass through (the caller words them).
    """
    where = fh.tell()
    fh.seek(len(_PNG_SIGNATURE))
    try:
        index = 0
        while True:
            index += 1
            header = fh.read(8)
            if len(header) < 8:
                raise CorruptFileError(TRUNCATED, path=path)
            length, kind = struct.unpack(">I4s", header)
            name = (
                f"chunk {index} ({kind.decode('ascii')})"
                if kind in _PNG_KNOWN
                else (f"chunk {index}")
            )
            if length > _PNG_MAX_CHUNK or not kind.isalpha():
                raise CorruptFileError(
                    _damaged("PNG", f"{name} has an invalid length or type"), path=path
                )
            crc = zlib.crc32(kind)
            left = length
            while left:
                piece = fh.read(min(left, _BLOCK))
                if not piece:
                    raise CorruptFileError(TRUNCATED, path=path)
                crc = zlib.crc32(piece, crc)
                left -= len(piece)
            stored = fh.read(4)
            if len(stored) < 4:
                raise CorruptFileError(TRUNCATED, path=path)
            if int.from_bytes(stored, "big") != crc:
                raise CorruptFileError(_damaged("PNG", f"{name} fails its CRC check"), path=path)
            if kind == b"IEND":
                return
    finally:
        fh.seek(where)


def jpeg_has_eoi(data: bytes) -> bool:
    """Whether the JPEG stream `data` (starting with SOI) reaches its EOI marker.

    False when a segment or the entropy-coded data runs past the end of `data`.
    """
    pos, n = 2, len(data)
    while pos + 1 < n:
        if data[pos] != 0xFF:  # junk between segments: decoders resynchronise on a marker
            found = _MARKER_AFTER_SCAN.search(data, pos)
            if found is None:
                return False
            pos = found.start()
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
        elif marker == 0xD9:
            return True
        elif marker in _STANDALONE:
            pos += 2
        else:
            if pos + 4 > n:
                return False
            length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            pos += 2 + max(length, 2)
            if pos > n:
                return False
            if marker == 0xDA:  # SOS: entropy-coded data follows, up to the next marker
                found = _MARKER_AFTER_SCAN.search(data, pos)
                if found is None:
                    return False
                pos = found.start()
    return False


def check_jpeg(data: bytes, path: Path) -> None:
    """Raise `CorruptFileError` (`TRUNCATED`) when the JPEG stream has no EOI."""
    if not jpeg_has_eoi(data):
        raise CorruptFileError(TRUNCATED, path=path)


def bmp_pixel_bytes(head: bytes) -> tuple[int, int] | None:
    """(offset, bytes) of the pixel data a BMP header announces, or None if it cannot tell.

    Uncompressed and bit-field images: the row (padded to 4 bytes) times the rows;
    compressed ones (RLE): the header's image size when it gives one.
    """
    if len(head) < 26:
        return None
    offset, dib = struct.unpack_from("<I I", head, 10)
    if dib == 12:  # OS/2 core header: unsigned 16-bit sizes, never compressed
        width, height, _, bits = struct.unpack_from("<HHHH", head, 18)
        compression, image_size = 0, 0
    elif len(head) >= 38:
        width, height, _, bits, compression, image_size = struct.unpack_from("<iiHHII", head, 18)
    else:
        return None
    if compression in (0, 3, 6):  # BI_RGB, BI_BITFIELDS, BI_ALPHABITFIELDS
        return offset, (abs(width) * bits + 31) // 32 * 4 * abs(height)
    return (offset, image_size) if image_size else None


def check_bmp(fh: IO[bytes], path: Path, head: bytes) -> None:
    """Raise `CorruptFileError` (`TRUNCATED`) when the file is shorter than its pixel data."""
    announced = bmp_pixel_bytes(head)
    if announced is None:
        return
    offset, size = announced
    where = fh.tell()
    try:
        file_size = fh.seek(0, 2)
    finally:
        fh.seek(where)
    if file_size < offset + size:
        raise CorruptFileError(TRUNCATED, path=path)
