"""Raster files for the hostile corpus: good PNG variants and broken or costly PNG, JPEG,
BMP, GIF and TIFF files, built in memory from a greyscale array (bytes out, no I/O).

The broken ones are made at the byte level (chunks, markers, headers) so each is exactly
the defect it is named after and nothing else: a PNG with one bad CRC is otherwise a valid
PNG of a real image, a scan-bomb JPEG is a valid progressive JPEG with one scan repeated.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from numpy.typing import NDArray
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

Grey = NDArray[np.uint8]


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def png(grey: Grey) -> bytes:
    return encode(Image.fromarray(grey), "PNG")


def png_16bit(grey: Grey) -> bytes:
    """16-bit greyscale: the 8-bit values spread over 0..65535 (plus a low-order ramp)."""
    wide = grey.astype(np.uint16) * 257
    wide = wide ^ (np.arange(grey.shape[1], dtype=np.uint16) % 7)[None, :]
    return encode(Image.fromarray(wide), "PNG")


def png_palette(grey: Grey) -> bytes:
    """An 8-bit palette PNG whose palette is a slightly warm grey ramp (as some exporters do)."""
    im = Image.fromarray(grey).convert("P")
    ramp = [c for v in range(256) for c in (v, v, max(0, v - 3))]
    im.putpalette(ramp)
    return encode(im, "PNG")


def png_alpha(grey: Grey) -> bytes:
    """Greyscale + alpha: the image opaque, with a soft transparent border."""
    alpha = np.full(grey.shape, 255, np.uint8)
    alpha[:8, :] = 0
    alpha[-8:, :] = 128
    return encode(Image.fromarray(np.dstack([grey, alpha])), "PNG")


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The (type, payload) chunks of a PNG; raises ValueError on a non-PNG."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG: the 8-byte signature is missing")
    chunks, pos = [], len(PNG_SIGNATURE)
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        chunks.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


def chunk(kind: bytes, payload: bytes, *, crc: int | None = None) -> bytes:
    value = zlib.crc32(kind + payload) if crc is None else crc
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", value)


def png_from_chunks(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return PNG_SIGNATURE + b"".join(chunk(k, p) for k, p in chunks)


def png_bad_crc(grey: Grey) -> bytes:
    """A real PNG whose first IDAT carries a wrong CRC."""
    out = bytearray(PNG_SIGNATURE)
    for kind, payload in png_chunks(png(grey)):
        bad = kind == b"IDAT" and b"IDAT" not in out
        out += chunk(kind, payload, crc=(zlib.crc32(kind + payload) ^ 0x5A5A) if bad else None)
    return bytes(out)


def deflate_zeros(n_zeros: int, *, prefix: bytes = b"", zlib_wrapped: bool = False) -> bytes:
    """`prefix` then `n_zeros` zero bytes, deflated (raw, or in a zlib wrapper), in
    milliseconds whatever `n_zeros` is.

    Each MiB of zeros is compressed after a full flush, which resets the compressor, so
    its output is the same bytes every time: it is computed once and repeated. The zlib
    trailer (Adler-32) is computed in closed form: zeros leave its low half unchanged and
    add n times it to the high half.
    """
    block = bytes(1 << 20)
    full, rest = divmod(n_zeros, len(block))
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [comp.compress(prefix)]
    if full:
        parts.append(comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH))
    if full > 1:
        parts.append((comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)) * (full - 1))
    parts.append(comp.compress(bytes(rest)) + comp.flush())
    raw = b"".join(parts)
    if not zlib_wrapped:
        return raw
    adler = zlib.adler32(prefix)
    low, high = adler & 0xFFFF, adler >> 16
    high = (high + n_zeros * low) % 65521
    return b"\x78\xda" + raw + struct.pack(">I", (high << 16) | low)


def png_metadata_bomb(grey: Grey, inflated_bytes: int = 512 << 20) -> bytes:
    """A real PNG with an iCCP profile and a zTXt text that each inflate to `inflated_bytes`
    of zeros from about 1/1000 of that (zlib's ratio on zeros)."""
    blob = deflate_zeros(inflated_bytes, zlib_wrapped=True)
    icc = b"sRGB bomb\x00\x00" + blob  # name, NUL, compression method 0, profile
    ztxt = b"Comment\x00\x00" + blob  # keyword, NUL, compression method 0, text
    chunks = png_chunks(png(grey))
    return png_from_chunks([chunks[0], (b"iCCP", icc), (b"zTXt", ztxt), *chunks[1:]])


def png_raw(width: int, height: int, rows: bytes) -> bytes:
    """An 8-bit greyscale PNG from its raw filtered scanlines (one filter byte per row)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return png_from_chunks([(b"IHDR", ihdr), (b"IDAT", zlib.compress(rows)), (b"IEND", b"")])


def png_constant(height: int, width: int, value: int) -> bytes:
    return png(np.full((height, width), value, np.uint8))


def png_constant_noise(height: int, width: int, value: int, seed: int) -> bytes:
    """A constant image with +-1 grey level of noise: no structure, only sensor-like jitter."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(-1, 2, size=(height, width))
    return png(np.clip(value + noise, 0, 255).astype(np.uint8))


def jpeg(grey: Grey, **params: object) -> bytes:
    return encode(Image.fromarray(grey), "JPEG", quality=90, **params)


def jpeg_cmyk(grey: Grey) -> bytes:
    """A CMYK JPEG (Adobe, inverted) of the image: the K plate carries it, CMY are flat."""
    k = 255 - grey
    flat = np.zeros_like(grey)
    planes = np.ascontiguousarray(np.dstack([flat, flat, flat, k]))
    cmyk = Image.frombytes("CMYK", (grey.shape[1], grey.shape[0]), planes.tobytes())
    return encode(cmyk, "JPEG", quality=90)


def _scans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each SOS segment with its entropy-coded data, in file order."""
    scans, pos = [], 2
    while pos < len(data) - 1:
        if data[pos] != 0xFF:
            raise ValueError(f"JPEG marker expected at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xD9:  # EOI
            break
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        end = pos + 2 + length
        if marker == 0xDA:  # SOS: the entropy-coded data runs to the next real marker
            while True:
                end = data.index(b"\xff", end)
                nxt = data[end + 1]
                if nxt == 0x00 or 0xD0 <= nxt <= 0xD7:  # stuffed byte or restart marker
                    end += 2
                    continue
                break
            scans.append((pos, end))
        pos = end
    return scans


def jpeg_scan_bomb(side: int = 2000, repeats: int = 4000, seed: int = 0) -> bytes:
    """A progressive JPEG of side x side whose first AC refinement scan is repeated `repeats`
    times: a ~100 KB file that costs a full pass over the image per repeat to decode."""
    rng = np.random.default_rng(seed)
    blocks = (rng.random((side // 8, side // 8)) * 255).astype(np.uint8)
    image = np.kron(blocks, np.ones((8, 8), np.uint8))
    data = encode(Image.fromarray(image), "JPEG", quality=50, progressive=True)
    scans = _scans(data)
    for start, end in scans:
        ns = data[start + 4]
        ss, se, ahl = data[start + 5 + 2 * ns : start + 8 + 2 * ns]
        if ss >= 1 and se == 63 and ahl >> 4:  # AC refinement: visits every coefficient
            repeated = data[start:end]
            break
    else:
        raise ValueError("the encoder wrote no AC refinement scan to repeat")
    return data[: scans[-1][1]] + repeated * repeats + b"\xff\xd9"


def bmp_absurd_header() -> bytes:
    """A BMP whose info header claims 1,000,000 x 1,000,000 pixels at 24 bits, 64 bytes long."""
    width = height = 1_000_000
    pixels = b"\x80" * 64
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    header = struct.pack("<2sIHHI", b"BM", 14 + len(info) + len(pixels), 0, 0, 14 + len(info))
    return header + info + pixels


def gif(grey: Grey) -> bytes:
    return encode(Image.fromarray(grey), "GIF")


def tiff(grey: Grey) -> bytes:
    return encode(Image.fromarray(grey), "TIFF", compression="tiff_deflate")


def zip_archive(members: dict[str, bytes]) -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def pdf_document(text: str) -> bytes:
    """A minimal one-page PDF with `text` on it (PDF 1.4, uncompressed, valid xref)."""
    stream = f"BT /F1 18 Tf 72 720 Td ({text}) Tj ET".encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)
