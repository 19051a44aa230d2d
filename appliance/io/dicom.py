"""DICOM ultrasound files to greyscale frames, with their calibration and identifiers.

Order of work; no pixel is decoded before every check has passed:

1. The header is parsed with the pixel data deferred. A header cut short is
   `CorruptFileError` (pixel data cut short too, but only after step 2). A file without
   the 128-byte preamble and "DICM" is parsed with `force=True` and kept only if the
   dataset has a SOP Class UID or Pixel Data, else `UnsupportedFormatError`.
2. Modality must be US, else `NotUltrasoundError` naming the modality in words ("missing"
   when the element is absent). Then Pixel Data must be present (`NoPixelDataError`).
3. Frames are chosen (below); rows x columns x chosen frames must fit `max_pixels` and no
   side may exceed 32768 (`ImageTooLargeError`).
4. A decoder for the transfer syntax must be installed (`CorruptFileError` says which
   package to install); only the chosen frames are decoded (`pydicom.pixels.iter_pixels`).
5. Greyscale uint8: PALETTE COLOR through its colour LUT; YBR is converted to RGB by
   pydicom (JPEG 2000 YBR_ICT/RCT by the decoder); RGB to grey with Pillow's luma
   (`images.rgb_to_grey`); monochrome deeper than 8 bits through the modality LUT, then
   the VOI LUT or the first window if present, else min-max over all chosen frames;
   8-bit monochrome is kept as stored; MONOCHROME1 is inverted.

Multi-frame (cine) default: every frame is kept when the file has at most `max_frames`
frames; otherwise `max_frames` frames evenly spaced over the cine, the first and the last
included (index i*(n-1)/(max_frames-1), rounded half up). `frame_indices`,
`n_frames_total` and a note "frames sampled: 16 of 120" record the choice.

Calibration: among the Sequence of Ultrasound Regions (0018,6011), the largest region
that is 2-D (RegionSpatialFormat 1) and in cm on both axes (PhysicalUnits 3) is used, the
first one on a tie (dual views). Every frame is cropped to it (inclusive bounds, clipped
to the image), `crop` is (x0, y0, x1, y1) with x1/y1 exclusive, and `pixel_spacing_mm` is
(PhysicalDeltaY, PhysicalDeltaX) x 10. A region whose deltas are not finite and positive
(NaN, Infinity, 0, negative) is not calibrated: such a region is used for its crop only
when no calibrated region exists (a note says so). Without a calibrated region, Pixel
Spacing (0028,0030) is used if both values are finite and positive; otherwise the spacing
is None and sizes are in pixels.
"""

from __future__ import annotations

import dataclasses
import re
import struct
import zlib
from pathlib import Path
from typing import IO, Any

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.pixels import get_decoder, iter_pixels
from pydicom.pixels.utils import get_nr_frames
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    UID_dictionary,
)

from appliance.errors import (
    CorruptFileError,
    NoPixelDataError,
    NotUltrasoundError,
    UnsupportedFormatError,
)
from appliance.io.bounds import describe_content, resolve_limits
from appliance.io.dicom_deflate import read_deflated, transfer_syntax_of
from appliance.io.dicom_frames import check_decoded, check_encapsulated, safe_uid
from appliance.io.dicom_pixels import calibration, select_frames, to_grey
from appliance.io.files import open_input, read_head
from appliance.io.images import check_dimensions
from appliance.io.types import ImageMeta, LoadedImage, ReadLimits

MODALITY_NAMES = {
    "US": "Ultrasound", "CT": "Computed Tomography", "MR": "Magnetic Resonance",
    "CR": "Computed Radiography", "DX": "Digital Radiography", "MG": "Mammography",
    "NM": "Nuclear Medicine", "PT": "Positron Emission Tomography", "OT": "Other",
    "SEG": "Segmentation", "SR": "Structured Report", "KO": "Key Object Selection",
    "PR": "Presentation State", "XA": "X-Ray Angiography", "RF": "Radio Fluoroscopy",
    "IO": "Intra-oral Radiography", "PX": "Panoramic X-Ray", "ES": "Endoscopy",
    "XC": "External-camera Photography", "OP": "Ophthalmic Photography",
    "OPT": "Ophthalmic Tomography", "IVUS": "Intravascular Ultrasound",
    "IVOCT": "Intravascular Optical Coherence Tomography", "ECG": "Electrocardiography",
    "RTIMAGE": "RT Image", "RTSTRUCT": "RT Structure Set", "RTDOSE": "RT Dose",
    "RTPLAN": "RT Plan", "DOC": "Document", "SM": "Slide Microscopy",
    "GM": "General Microscopy", "BMD": "Bone Densitometry", "TG": "Thermography",
    "REG": "Registration", "AU": "Audio", "HD": "Hemodynamic Waveform",
}  # fmt: skip
"""DICOM Modality codes (PS3.3 C.7.3.1.1.1) and their names, for rejection messages."""

_DEFER = "256 KB"  # large values (pixel data) stay on disk; palettes and regions are read
_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
# pydicom raises these on malformed or truncated content (fuzzed: OSError "No tag to
# read", TypeError and NotImplementedError on garbage VRs, RuntimeError from decoders).
_PARSE_ERRORS = (
    InvalidDicomError, BytesLengthException, OSError, EOFError, ValueError, TypeError,
    KeyError, IndexError, AttributeError, NotImplementedError, OverflowError,
    RuntimeError, struct.error, zlib.error,
)  # fmt: skip
_JPEG = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
         "1.2.840.10008.1.2.4.70")  # fmt: skip
_JPEG_LS = ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")
_CODE_STRING = re.compile(r"[A-Z0-9_ ]{1,16}")  # DICOM CS (PS3.5 6.2)


def is_dicom_head(head: bytes) -> bool:
    """True for "DICM" after the preamble, or a first tag in group 0000, 0002 or 0008."""
    if head[128:132] == b"DICM":
        return True
    if len(head) < 8:
        return False
    groups = {int.from_bytes(head[:2], "little"), int.from_bytes(head[:2], "big")}
    return bool(groups & {0x0000, 0x0002, 0x0008})


def modality_name(code: str) -> str:
    """'CT (Computed Tomography)'; an unknown code is given as it is when it is a valid code
    string (upper case, digits, space, underscore; at most 16), else in words."""
    name = MODALITY_NAMES.get(code)
    if name:
        return f"{code} ({name})"
    return code if _CODE_STRING.fullmatch(code) else "not a valid modality code"


def missing_decoder_reason(tsyntax: UID, missing: list[str]) -> str:
    """Why an installed-but-incomplete decoder cannot read `tsyntax`, and what to install."""
    if tsyntax in _JPEG:
        fix = (
            "install python-gdcm (or the GPL-licensed pylibjpeg-libjpeg: "
            "pip install 'fame-node[jpeg-gpl]')"
        )
    elif tsyntax in _JPEG_LS:
        fix = "install python-gdcm (or pyjpegls)"
    elif tsyntax.is_compressed and "2000" in tsyntax.name:
        fix = "install pylibjpeg and pylibjpeg-openjpeg"
    else:
        fix = "install one of: " + "; ".join(missing)
    return (
        f"the pixel data is compressed as {safe_uid(tsyntax)} and no decoder "
        f"for it is installed on this node: {fix}, or export the image uncompressed"
    )


def _fail(path: Path, what: str, exc: BaseException | None = None) -> CorruptFileError:
    # The exception's type only: pydicom's and the decoders' messages may quote values
    # read from the file (a name, a private tag's text), and reasons are shown and logged.
    detail = f" ({type(exc).__name__})" if exc is not None else ""
    return CorruptFileError(f"{what}{detail}: export the image again", path=path)


def _read_header(fh: IO[bytes], path: Path, head: bytes, size: int, max_bytes: int) -> Dataset:
    forced = head[128:132] != b"DICM"
    try:
        tsyntax, preamble, file_meta, _ = transfer_syntax_of(fh)
    except _PARSE_ERRORS:
        tsyntax = None  # dcmread below meets the same damage and words it
    if tsyntax == DeflatedExplicitVRLittleEndian:
        # never pydicom's own inflation: it inflates everything at once (a bomb's 1 GiB)
        try:
            ds: Dataset = read_deflated(fh, path, preamble, file_meta, max_bytes)
        except _PARSE_ERRORS as exc:
            raise _fail(path, "the deflated DICOM dataset cannot be parsed", exc) from exc
        return ds
    fh.seek(0)
    try:
        ds = pydicom.dcmread(fh, force=forced, defer_size=_DEFER)
    except _PARSE_ERRORS as exc:
        if forced:
            raise _not_dicom(path, head) from exc
        raise _fail(path, "the DICOM header cannot be parsed", exc) from exc
    if forced and "SOPClassUID" not in ds and "PixelData" not in ds:
        raise _not_dicom(path, head)
    if len(ds) == 0:
        # pydicom gives up on the whole file when encapsulated pixel data is cut off; read
        # the header alone, so that a truncated file of another modality is named as such.
        fh.seek(0)
        try:
            header: Dataset = pydicom.dcmread(fh, force=forced, stop_before_pixels=True)
        except _PARSE_ERRORS:
            header = Dataset()
        if "Modality" in header:
            _check_modality(header, path)
        raise _fail(path, "the file ends inside the DICOM data: it is truncated")
    try:
        _check_complete(ds, path, size, pixel_data=False)
    except _PARSE_ERRORS as exc:
        raise _fail(path, "the DICOM header has invalid values", exc) from exc
    return ds


def _check_complete(ds: Dataset, path: Path, size: int, *, pixel_data: bool) -> None:
    """Raise if a top-level value runs past the end of the file (the file is truncated).

    Pixel Data is checked separately (`pixel_data=True`), after the modality, so that a
    truncated CT is still reported as "not ultrasound".
    """
    deflated = _transfer_syntax(ds) == DeflatedExplicitVRLittleEndian  # offsets: inflated
    tags = [_PIXEL_DATA] if pixel_data else [t for t in ds.keys() if t != _PIXEL_DATA]  # noqa: SIM118
    for tag in tags:  # keys(): iterating a Dataset would convert (and read) every value
        elem = ds.get_item(tag, keep_deferred=True)
        if not isinstance(elem, RawDataElement) or elem.length == _UNDEFINED:
            continue
        short = elem.value is not None and len(elem.value) < elem.length
        beyond = elem.value is None and not deflated and elem.value_tell + elem.length > size
        if short or beyond:
            raise _fail(
                path,
                f"the file is truncated: it has {size:,} bytes but element {elem.tag} needs "
                f"{elem.value_tell + elem.length:,}",
            )


def _not_dicom(path: Path, head: bytes) -> UnsupportedFormatError:
    return UnsupportedFormatError(
        "the content is not a DICOM file (no 'DICM' marker after the 128-byte "
        "preamble, and no SOP Class UID or Pixel Data when read without it; it looks like "
        f"{describe_content(head)}): export the image again as DICOM, PNG, JPEG or BMP",
        path=path,
    )


def _transfer_syntax(ds: Dataset) -> UID:
    tsyntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    if tsyntax:
        return UID(tsyntax)
    implicit, little = ds.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian


def _check_modality(ds: Dataset, path: Path) -> str:
    code = str(ds.get("Modality") or "").strip().upper()
    if code == "US":
        return code
    if not code:
        raise NotUltrasoundError(
            "the DICOM file has no Modality (0008,0060), so it cannot be "
            "confirmed as ultrasound; FAME Node analyses ultrasound (US) images only: export "
            "the image from the ultrasound system with its modality",
            modality="missing",
            path=path,
        )
    raise NotUltrasoundError(
        f"DICOM modality is {modality_name(code)}; FAME Node analyses ultrasound "
        "(US) images only: send only the breast ultrasound images to this node",
        modality=code if _CODE_STRING.fullmatch(code) else "invalid",
        path=path,
    )


def _decode(src: Any, path: Path, tsyntax: UID, indices: tuple[int, ...]) -> list[NDArray[Any]]:
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as exc:
        raise CorruptFileError(
            f"the pixel data is encoded as {safe_uid(tsyntax)}, which no "
            "decoder installed on this node reads: export the image uncompressed, or as JPEG, "
            "JPEG 2000 or RLE",
            path=path,
        ) from exc
    if not decoder.is_available:
        raise CorruptFileError(
            missing_decoder_reason(tsyntax, list(decoder.missing_dependencies)), path=path
        )
    try:
        if not isinstance(src, Dataset):
            src.seek(0)
        return list(iter_pixels(src, indices=indices, transfer_syntax_uid=tsyntax))
    except _PARSE_ERRORS as exc:
        raise _fail(path, f"the {safe_uid(tsyntax)} pixel data cannot be decoded", exc) from exc


def _sop_class(ds: Dataset) -> str:
    uid = str(ds.get("SOPClassUID") or "")
    if uid in UID_dictionary:
        return f"{UID(uid).name}, {uid}"
    return uid if uid and UID(uid).is_valid else "unknown"


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    text = str(value).strip() if value is not None else ""
    return text or None


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What the header says will be decoded, and the metadata known before decoding."""

    photometric: str
    indices: tuple[int, ...]
    tsyntax: UID
    crop: tuple[int, int, int, int] | None
    meta: ImageMeta


def _plan(ds: Dataset, path: Path, size: int, max_frames: int, max_pixels: int) -> _Plan:
    modality = _check_modality(ds, path)
    if "PixelData" not in ds:
        raise NoPixelDataError(
            "this ultrasound DICOM file has no Pixel Data (7FE0,0010) (SOP Class "
            f"{_sop_class(ds)}): it holds no image; send the image itself",
            path=path,
        )
    _check_complete(ds, path, size, pixel_data=True)
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    photometric = str(ds.get("PhotometricInterpretation") or "").strip().upper()
    if rows < 1 or cols < 1 or not photometric:
        raise _fail(path, "the DICOM header lacks Rows, Columns or Photometric Interpretation")
    n_total = get_nr_frames(ds, warn=False)
    indices = select_frames(n_total, max_frames)
    check_dimensions(path, rows, cols, len(indices), max_pixels)
    notes = [f"frames sampled: {len(indices)} of {n_total}"] if n_total > len(indices) else []
    calib = calibration(ds, rows, cols)
    notes += calib.notes
    meta = ImageMeta(
        source_format="dicom",
        modality=modality,
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        sop_class_uid=_text(ds, "SOPClassUID"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        patient_id=_text(ds, "PatientID"),
        patient_name=_text(ds, "PatientName"),
        study_date=_text(ds, "StudyDate"),
        manufacturer=_text(ds, "Manufacturer"),
        model_name=_text(ds, "ManufacturerModelName"),
        photometric=photometric,
        bits_stored=int(ds.BitsStored) if ds.get("BitsStored") is not None else None,
        pixel_spacing_mm=calib.spacing_mm,
        crop=calib.crop,
        n_frames_total=n_total,
        frame_indices=indices,
        notes=tuple(notes),
    )
    return _Plan(photometric, indices, _transfer_syntax(ds), calib.crop, meta)


def read_dicom(
    path: Path,
    *,
    max_frames: int | None = None,
    max_pixels: int | None = None,
    limits: ReadLimits | None = None,
) -> LoadedImage:
    """Read an ultrasound DICOM file as greyscale uint8 frames (see the module docstring).

    `limits` bounds the work (`ReadLimits`); `max_frames` / `max_pixels` alone are the
    older form, with the other limits at their defaults.

    Raises
    ------
    EmptyFileError, UnreadableFileError, NotRegularFileError, UnsupportedFormatError,
    NotUltrasoundError, NoPixelDataError, ImageTooLargeError, InputTooCostlyError,
    CorruptFileError
        With a `reason` saying what was received, what was expected and what to do.
    """
    limits = resolve_limits(limits, max_frames, max_pixels)
    with open_input(path, max_bytes=limits.max_bytes) as fh:
        head = read_head(fh, path)
        if not is_dicom_head(head):
            raise _not_dicom(path, head)
        size = fh.seek(0, 2)
        fh.seek(0)
        ds = _read_header(fh, path, head, size, limits.max_bytes)
        try:
            plan = _plan(ds, path, size, limits.max_frames, limits.max_pixels)
            if plan.tsyntax.is_encapsulated:
                check_encapsulated(
                    fh, ds, path, plan.tsyntax, plan.indices, plan.meta.n_frames_total, limits
                )
        except _PARSE_ERRORS as exc:
            raise _fail(path, "the DICOM header has invalid values", exc) from exc
        deflated = plan.tsyntax == DeflatedExplicitVRLittleEndian  # already inflated: ds
        raw = _decode(ds if deflated else fh, path, plan.tsyntax, plan.indices)
    samples = 3 if raw and raw[0].ndim == 3 else 1  # YBR/RGB come back as 3 samples
    check_decoded(raw, path, int(ds.Rows), int(ds.Columns), samples)
    if plan.crop is not None:
        x0, y0, x1, y1 = plan.crop
        raw = [a[y0:y1, x0:x1] for a in raw]
    try:
        frames, grey_notes = to_grey(raw, ds, plan.photometric)
    except _PARSE_ERRORS as exc:
        what = f"the {plan.photometric} pixels cannot be converted to greyscale"
        raise _fail(path, what, exc) from exc
    meta = dataclasses.replace(plan.meta, notes=(*plan.meta.notes, *grey_notes))
    return LoadedImage(frames=[np.ascontiguousarray(f, dtype=np.uint8) for f in frames], meta=meta)
