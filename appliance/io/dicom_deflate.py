"""Deflated DICOM (transfer syntax 1.2.840.10008.1.2.1.99), inflated within a bound.

pydicom inflates a deflated dataset in one `zlib.decompress` call: a 1.3 MB file that
inflates to 1 GiB took 3.3 GB of memory before any check could run. Here the dataset is
inflated incrementally (`zlib.decompressobj` with `max_length`), in two stages:

1. up to the Pixel Data element only (its header: Rows, Columns, Number of Frames,
   Samples per Pixel, Bits Allocated), never more than `HEADER_MAX` or `max_bytes`;
2. the rest, up to what that header says the pixels need plus `TRAILER_BYTES` for the
   few elements that may follow Pixel Data, and never more than `max_bytes`.

A stream that would inflate past its bound is refused (`ImageTooLargeError`) with what
it announced and what it reached; nothing beyond the bound is ever held in memory.

`transfer_syntax_of` reads the File Meta Information alone (it is never deflated), so
that the reader knows before pydicom parses anything whether this path is needed.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.uid import UID

from appliance.errors import ImageTooLargeError

TRAILER_BYTES = 4 << 20
"""Inflated bytes allowed after the pixels (padding, digital signatures...)."""
_CHUNK_IN = 1 << 16  # compressed bytes read at a time
_PROBE = 1 << 20  # inflated bytes first tried for the header, doubled on each attempt
HEADER_MAX = 64 << 20
"""Most inflated bytes before Pixel Data (an ultrasound header is a few kilobytes)."""
_PIXEL_DATA_GROUP = 0x7FE0


def transfer_syntax_of(fh: IO[bytes]) -> tuple[UID | None, bytes | None, FileMetaDataset, int]:
    """(transfer syntax, preamble, file meta, offset of the dataset) read from the start.

    The syntax is None when the file has no File Meta Information. `fh` is left at the
    start of the dataset. pydicom's own reader of the meta group is used (it is what
    `dcmread` runs first); parse errors propagate to the caller, which words them.
    """
    fh.seek(0)
    preamble = read_preamble(fh, True)  # type: ignore[arg-type]
    meta = _read_file_meta_info(fh)  # type: ignore[arg-type]
    tsyntax = meta.get("TransferSyntaxUID")
    return (UID(str(tsyntax)) if tsyntax else None), preamble, meta, fh.tell()


class _Inflater:
    """Incremental raw-deflate inflation of `fh` from its current position into `out`."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self._z = zlib.decompressobj(-zlib.MAX_WBITS)
        self._pending = b""
        self.out = bytearray()
        self.done = False

    def fill(self, target: int) -> None:
        """Inflate until `out` holds `target` bytes or the stream ends; at most `target`."""
        while len(self.out) < target and not self.done:
            room = target - len(self.out)
            if not self._pending:
                self._pending = self._fh.read(_CHUNK_IN)
                if not self._pending:  # input ended (complete or truncated): drain zlib
                    drained = self._z.decompress(b"", room)
                    self.out += drained
                    self.done = not drained or self._z.eof
                    continue
            self.out += self._z.decompress(self._pending, room)
            self._pending = self._z.unconsumed_tail
            if self._z.eof:
                self.done = True


def _header_until_pixels(data: bytearray) -> tuple[Dataset, int] | None:
    """The dataset up to Pixel Data and its inflated length, or None if not reached yet."""
    reached: list[bool] = []

    def stop(tag: Any, vr: str | None, length: int) -> bool:
        if tag.group >= _PIXEL_DATA_GROUP:
            reached.append(True)
            return True
        return False

    buf = DicomBytesIO(bytes(data))
    buf.is_little_endian, buf.is_implicit_VR = True, False
    try:
        ds = read_dataset(cast(BinaryIO, buf), False, True, stop_when=stop)
    except EOFError:
        return None
    if not reached:
        return None
    return ds, buf.tell()


def _pixel_bytes(ds: Dataset) -> int:
    """Bytes of native pixel data the header describes (all frames)."""
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    frames = int(ds.get("NumberOfFrames") or 1)
    samples = int(ds.get("SamplesPerPixel") or 1)
    bits = int(ds.get("BitsAllocated") or 8)
    per_sample = (max(1, bits) + 7) // 8
    return max(0, rows) * max(0, cols) * max(1, frames) * max(1, samples) * per_sample


def _refusal(path: Path, what: str) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"the deflated DICOM dataset {what}; it was not inflated further (a decompression "
        "bomb, or a damaged file): export the image again without deflate compression",
        path=path,
    )


def read_deflated(
    fh: IO[bytes], path: Path, preamble: bytes | None, meta: FileMetaDataset, max_bytes: int
) -> FileDataset:
    """The dataset of a deflated file, `fh` at the start of the deflated data.

    Raises `ImageTooLargeError` when it would inflate past its bound (module docstring);
    pydicom's parse errors propagate for the caller to word.
    """
    inflater = _Inflater(fh)
    header_max = min(max_bytes, HEADER_MAX)
    found, target = None, _PROBE
    while found is None:
        inflater.fill(min(header_max, target))
        found = _header_until_pixels(inflater.out)
        if inflater.done or len(inflater.out) >= header_max:
            break
        target *= 2  # doubling: a long header costs a few parses, not one per megabyte
    if found is None and not inflater.done:
        raise _refusal(path, f"reaches no Pixel Data within the {header_max:,} bytes allowed")
    if found is not None:
        header, header_len = found
        bound = min(max_bytes, header_len + 12 + _pixel_bytes(header) + TRAILER_BYTES)
        inflater.fill(bound + 1)  # one byte more tells "exactly at the bound" from "beyond"
        if len(inflater.out) > bound:
            rows, cols = header.get("Rows"), header.get("Columns")
            frames = header.get("NumberOfFrames") or 1
            raise _refusal(
                path,
                f"inflates past {bound:,} bytes, the most its header allows: it describes "
                f"{cols} x {rows} pixels x {frames} frame(s) ({_pixel_bytes(header):,} bytes "
                "of pixels)",
            )
    data = DicomBytesIO(bytes(inflater.out))
    data.is_little_endian, data.is_implicit_VR = True, False
    del inflater
    dataset = read_dataset(cast(BinaryIO, data), False, True)
    ds = FileDataset(str(path), dataset, preamble, meta, False, True)
    ds.set_original_encoding(False, True, dataset._character_set)
    return ds
