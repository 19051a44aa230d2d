"""Checks on a DICOM file's compressed frames before they are decoded, and on what came out.

A DICOM header's Rows x Columns x frames is checked against `max_pixels` before decoding
(`appliance.io.dicom`), but a decoder allocates what the *codestream* announces, and a
progressive JPEG costs one pass per scan. So, for every frame that will be decoded:

* JPEG and JPEG-LS: the scans (SOS markers) are counted and more than `max_jpeg_scans`
  is refused (`InputTooCostlyError`);
* JPEG, JPEG-LS and JPEG 2000: the codestream's own size (SOF / SIZ) must be the
  header's Columns x Rows (`CorruptFileError` otherwise: the header and the image
  disagree, and a larger codestream would decode past every bound);
* RLE: the compressed frame may not exceed twice the decoded frame (RLE output is at
  most 128 times its input, so an oversized frame is how an RLE bomb would look).

After decoding, every array must have the header's rows and columns (`check_decoded`).

`safe_uid` words a transfer syntax for a reason without quoting arbitrary text: the
name of a UID pydicom knows, the digits of a valid unknown one, else "an invalid UID".
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

from numpy.typing import NDArray
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.uid import UID, UID_dictionary

from appliance.errors import CorruptFileError, InputTooCostlyError
from appliance.io.bounds import codestream_size, jpeg_scan_count, scan_refusal
from appliance.io.types import ReadLimits

_PIXEL_DATA = 0x7FE00010
_JPEG_FAMILY = {
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
}  # fmt: skip
_J2K = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}  # fmt: skip
_RLE = "1.2.840.10008.1.2.5"


def safe_uid(uid: str) -> str:
    """'JPEG Baseline (Process 1) (1.2.840.10008.1.2.4.50)'; never text that is not a UID."""
    text = str(uid)
    if text in UID_dictionary:
        return f"{UID(text).name} ({text})"
    if UID(text).is_valid:
        return f"an unknown transfer syntax ({text})"
    return "an invalid transfer syntax UID"


def _frame_bytes(fh: IO[bytes], elem: Any, index: int, n_frames: int, extended: Any) -> bytes:
    if isinstance(elem, RawDataElement) and elem.value is None:  # deferred: still on disk
        fh.seek(elem.value_tell)
        return get_frame(fh, index, number_of_frames=n_frames, extended_offsets=extended)
    return get_frame(elem.value, index, number_of_frames=n_frames, extended_offsets=extended)


def check_encapsulated(
    fh: IO[bytes],
    ds: Dataset,
    path: Path,
    tsyntax: UID,
    indices: tuple[int, ...],
    n_frames: int,
    limits: ReadLimits,
) -> None:
    """Refuse, before decoding, a frame of `indices` that would cost more than its header says.

    Errors reading the fragments propagate (pydicom's), for the caller to word as damage.
    """
    family = str(tsyntax)
    if family not in _JPEG_FAMILY and family not in _J2K and family != _RLE:
        return  # other encapsulated syntaxes (video, deflate image...) are not decoded here
    rows, cols = int(ds.Rows), int(ds.Columns)
    elem = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    extended = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    samples = int(ds.get("SamplesPerPixel") or 1)
    bits = int(ds.get("BitsAllocated") or 8)
    decoded_bytes = rows * cols * samples * ((bits + 7) // 8)
    for index in indices:
        frame = _frame_bytes(fh, elem, index, n_frames, extended)
        where = f"frame {index + 1} of the DICOM pixel data" if n_frames > 1 else "the DICOM image"
        if family == _RLE:
            if len(frame) > 2 * decoded_bytes + 1024:
                raise CorruptFileError(
                    f"{where} holds {len(frame):,} bytes of RLE data for {decoded_bytes:,} "
                    "bytes of pixels (RLE data is never much larger than its pixels): the file "
                    "is damaged or crafted: export the image again",
                    path=path,
                )
            continue
        if family in _JPEG_FAMILY:
            scans = jpeg_scan_count(frame, stop_after=limits.max_jpeg_scans)
            if scans > limits.max_jpeg_scans:
                raise InputTooCostlyError(
                    scan_refusal(scans, limits.max_jpeg_scans, where), path=path
                )
        size = codestream_size(frame)
        if size is not None and size != (cols, rows):
            raise CorruptFileError(
                f"{where} is a {size[0]} x {size[1]} pixel codestream, but the DICOM header "
                f"says {cols} x {rows} (Columns x Rows): the file is damaged or crafted and "
                "was not decoded: export the image again",
                path=path,
            )


def check_decoded(
    arrays: list[NDArray[Any]], path: Path, rows: int, cols: int, samples: int
) -> None:
    """Raise `CorruptFileError` when a decoded frame is not the header's rows x columns."""
    for array in arrays:
        expected = (rows, cols) if samples == 1 else (rows, cols, samples)
        if array.shape != expected and not (samples == 1 and array.shape == (rows, cols, 1)):
            raise CorruptFileError(
                f"a decoded frame is {array.shape} (rows, columns[, samples]) but the DICOM "
                f"header says {expected}: the file is damaged: export the image again",
                path=path,
            )
