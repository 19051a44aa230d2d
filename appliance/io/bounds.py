"""What one input may cost, judged from its bytes before any decoder runs: pure functions.

* `resolve_limits` turns the readers' keyword arguments into one `ReadLimits`;
* `size_refusal` says why a file over `ReadLimits.max_bytes` is refused unread;
* `jpeg_scan_count` counts the scans (SOS markers) of a JPEG or JPEG-LS codestream, so
  that a progressive JPEG with thousands of scans (each one a full pass over the image:
  a 472 KB file with 2000 scans decodes for a minute) is refused before it is decoded;
* `codestream_size` reads the (columns, rows) a JPEG, JPEG-LS or JPEG 2000 codestream
  will decode to, so that a DICOM frame whose codestream is larger than the header's
  Rows x Columns is refused before the decoder allocates it;
* `describe_content` names what kind of content a file holds (text, a ZIP archive, an ELF
  executable...) without quoting any of its bytes: reasons are shown and logged, and a
  file's bytes may be anyone's secret (a symlink to /etc/shadow once showed its content).

Nothing here reads a file or raises: callers turn the answers into `InputError`s.
"""

from __future__ import annotations

import re

from appliance.io.types import ReadLimits

# A marker inside entropy-coded data: 0xFF then C0..FE except RST0-7 (D0..D7). 0xFF00 is
# JPEG byte stuffing, 0xFF followed by 00..7F is JPEG-LS bit stuffing, 0xFFFF is fill.
_MARKER_IN_SCAN = re.compile(rb"\xff[\xc0-\xcf\xd8-\xfe]")
_SOS = 0xDA
_EOI = 0xD9
_STANDALONE = {0x01, 0xD8, *range(0xD0, 0xD8)}  # TEM, SOI, RST0-7: no length field
# Start-of-frame markers of JPEG (SOF0-3, 5-7, 9-11, 13-15) and JPEG-LS (SOF55).
_SOF = {*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7}
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"


def resolve_limits(
    limits: ReadLimits | None, max_frames: int | None, max_pixels: int | None
) -> ReadLimits:
    """One `ReadLimits` from a reader's `limits` or its older `max_frames` / `max_pixels`.

    Raises
    ------
    TypeError
        Both `limits` and one of the older keywords were given (which one wins would be a
        guess).
    ValueError
        A limit is below 1.
    """
    if limits is not None and (max_frames is not None or max_pixels is not None):
        raise TypeError("pass either limits=ReadLimits(...) or max_frames/max_pixels, not both")
    if limits is None:
        defaults = ReadLimits()
        limits = ReadLimits(
            max_frames=defaults.max_frames if max_frames is None else max_frames,
            max_pixels=defaults.max_pixels if max_pixels is None else max_pixels,
        )
    bad = {k: v for k, v in vars(limits).items() if v < 1}
    if bad:
        raise ValueError(f"read limits must be >= 1, got {bad}")
    return limits


def size_refusal(size: int, max_bytes: int) -> str | None:
    """Why a file of `size` bytes is refused unread, or None when it is within `max_bytes`."""
    if size <= max_bytes:
        return None
    return (
        f"the file has {size:,} bytes, more than the {max_bytes:,} bytes one input may have "
        "(ingest.max_input_bytes); it was not read: export the image again (a single image, "
        "or a cine with fewer frames), or raise the limit"
    )


def scan_refusal(scans: int, max_scans: int, where: str = "the JPEG image") -> str:
    """The reason for refusing a JPEG stream with more than `max_scans` scans."""
    return (
        f"{where} has more than {max_scans} scans ({scans} counted before stopping); an "
        "ordinary progressive JPEG has about 10, and decoding this many could hold the node "
        "for minutes, so it was not decoded (processing.max_jpeg_scans): export the image "
        "again as baseline JPEG, PNG or uncompressed DICOM"
    )


def jpeg_scan_count(data: bytes, stop_after: int) -> int:
    """Scans (SOS markers) in a JPEG or JPEG-LS codestream starting with SOI.

    Segments are walked by their lengths, so that SOS bytes inside an APP segment (an EXIF
    thumbnail is itself a JPEG) are not counted; entropy-coded data is skipped to the next
    real marker. Counting stops once it passes `stop_after` (the caller only needs to
    know that the limit is exceeded) or at EOI; a stream cut short gives what was counted
    (its decoder reports the damage). 0 for data that does not start with SOI.
    """
    n = len(data)
    if not data.startswith(b"\xff\xd8"):
        return 0
    pos, scans = 2, 0
    while pos + 1 < n:
        if data[pos] != 0xFF:  # junk between segments: decoders resynchronise on a marker
            found = _MARKER_IN_SCAN.search(data, pos)
            if found is None:
                break
            pos = found.start()
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == _EOI:
            break
        if marker in _STANDALONE:
            pos += 2
            continue
        if pos + 4 > n:
            break
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2:
            break  # damaged: the decoder will say so
        pos += 2 + length
        if marker == _SOS:
            scans += 1
            if scans > stop_after:
                break
            found = _MARKER_IN_SCAN.search(data, pos)
            if found is None:
                break
            pos = found.start()
    return scans


def codestream_size(data: bytes) -> tuple[int, int] | None:
    """(columns, rows) announced by a JPEG / JPEG-LS SOF or a JPEG 2000 SIZ marker, or None.

    None when the data is none of these or the header is cut short; the decoder then
    reports the damage. A JP2 file wrapper is looked through (its codestream box).
    """
    if data.startswith(b"\xff\xd8"):
        pos, n = 2, len(data)
        while pos + 4 <= n and data[pos] == 0xFF:
            marker = data[pos + 1]
            if marker == 0xFF:
                pos += 1
                continue
            if marker in _STANDALONE:
                pos += 2
                continue
            length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            if marker in _SOF:
                if pos + 9 > n:
                    return None
                rows = int.from_bytes(data[pos + 5 : pos + 7], "big")
                cols = int.from_bytes(data[pos + 7 : pos + 9], "big")
                return cols, rows
            if marker == _SOS or length < 2:
                return None  # no frame header before the first scan: damaged
            pos += 2 + length
        return None
    start = data.find(_J2K_SOC_SIZ, 0, 4096)  # at 0 for a codestream, later inside JP2
    if start < 0 or start + 4 + 22 > len(data):
        return None
    siz = start + 4  # Lsiz(2) Rsiz(2) Xsiz(4) Ysiz(4) XOsiz(4) YOsiz(4)
    x, y, xo, yo = (int.from_bytes(data[at : at + 4], "big") for at in range(siz + 4, siz + 20, 4))
    if x <= xo or y <= yo:
        return None
    return x - xo, y - yo


_KINDS: tuple[tuple[bytes, int, str], ...] = (
    (b"PK\x03\x04", 0, "a ZIP archive (a DICOMDIR export, an Office document?)"),
    (b"PK\x05\x06", 0, "an empty ZIP archive"),
    (b"\x1f\x8b", 0, "a gzip archive"),
    (b"BZh", 0, "a bzip2 archive"),
    (b"\xfd7zXZ\x00", 0, "an xz archive"),
    (b"7z\xbc\xaf\x27\x1c", 0, "a 7-Zip archive"),
    (b"Rar!", 0, "a RAR archive"),
    (b"ustar", 257, "a tar archive"),
    (b"%PDF", 0, "a PDF document"),
    (b"\x7fELF", 0, "an ELF executable"),
    (b"MZ", 0, "a Windows executable"),
    (b"GIF8", 0, "a GIF image (not supported)"),
    (b"II*\x00", 0, "a TIFF image (not supported)"),
    (b"MM\x00*", 0, "a TIFF image (not supported)"),
    (b"\x00\x00\x00\x0cjP  ", 0, "a JPEG 2000 image file (not supported outside DICOM)"),
    (b"\xff\x4f\xff\x51", 0, "a JPEG 2000 codestream (not supported outside DICOM)"),
    (b"SQLite format 3\x00", 0, "an SQLite database"),
    (b"\xd0\xcf\x11\xe0", 0, "an old Office document"),
    (b"RIFF", 0, "a RIFF file (audio or video)"),
    (b"OggS", 0, "an Ogg file (audio or video)"),
)


def describe_content(head: bytes) -> str:
    """What kind of content the first bytes show, in words; never the bytes themselves."""
    for magic, offset, kind in _KINDS:
        if head[offset : offset + len(magic)] == magic:
            return kind
    if head[4:8] in (b"ftyp", b"moov", b"mdat"):
        return "an MP4 or QuickTime video"
    sample = head[:512]
    if sample and _looks_like_text(sample):
        if sample.lstrip().startswith((b"<", b"\xef\xbb\xbf<")):
            return "text (XML or HTML)"
        if sample.lstrip().startswith((b"{", b"[")):
            return "text (JSON?)"
        return "text"
    return "unrecognised binary data"


def _looks_like_text(sample: bytes) -> bool:
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(sample) - 3:  # not just a character cut at the end of the sample
            return False
        text = sample[: exc.start].decode("utf-8")
    printable = sum(ch.isprintable() or ch in "\t\r\n\f" for ch in text)
    return printable >= 0.95 * max(1, len(text))
