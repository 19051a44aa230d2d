"""Pure functions over a DICOM header and its decoded pixels: no I/O.

`select_frames` chooses the frames of a cine, `calibration` the region to crop to and the
mm/pixel (`ultrasound_region`, with `pixel_spacing` as the fallback); `appliance.io.dicom`
states the rules. A calibration number that is not finite and positive (NaN, Infinity, 0,
negative) is no calibration: it never leaves the decoder.
`to_grey` takes frames as pydicom decodes them (YBR already converted to RGB):

* PALETTE COLOR: through the Red/Green/Blue LUTs (16-bit entries keep their top 8 bits),
  then luma;
* RGB (any 3-sample data): Pillow's luma (`images.rgb_to_grey`) for 8 bits; deeper colour
  through float luma and min-max over all frames;
* monochrome, 8 bits stored: kept as stored (fewer bits are stretched to 0..255);
* monochrome, more bits: the modality LUT / rescale, then the first VOI LUT if present,
  else the first window (LINEAR, LINEAR_EXACT or SIGMOID), else min-max over all frames
  (one scale for the whole cine, so frames stay comparable);
* MONOCHROME1 is inverted last, so that bright always means echogenic.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi

from appliance.io.images import rescale_to_uint8, rgb_to_grey
from appliance.io.types import Frame


@dataclasses.dataclass(frozen=True)
class Region:
    """The ultrasound region used: crop (x0, y0, x1, y1; x1/y1 exclusive) and mm/pixel."""

    crop: tuple[int, int, int, int]
    spacing_mm: tuple[float, float] | None  # (row, column); None: not finite and positive
    index: int  # position in the Sequence of Ultrasound Regions
    n_usable: int


@dataclasses.dataclass(frozen=True)
class Calibration:
    """What `calibration` found: the crop (or None), mm/pixel (or None), and notes on why."""

    crop: tuple[int, int, int, int] | None
    spacing_mm: tuple[float, float] | None  # (row, column)
    notes: tuple[str, ...]


def select_frames(n_total: int, max_frames: int) -> tuple[int, ...]:
    """All frames if they fit, else `max_frames` evenly spaced, first and last included."""
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if n_total <= max_frames:
        return tuple(range(n_total))
    if max_frames == 1:
        return (0,)
    span, steps = n_total - 1, max_frames - 1
    return tuple((2 * i * span + steps) // (2 * steps) for i in range(max_frames))


def _finite_positive(value: Any) -> float | None:
    """A calibration number as a float, or None unless it is finite and > 0.

    NaN, +/-Infinity, zero, negative values, several values and non-numbers are all "no
    calibration": a size in millimetres computed from them would be meaningless.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _region_crop(item: Dataset, rows: int, cols: int) -> tuple[int, int, int, int] | None:
    """A region's bounds (inclusive in DICOM) as a crop clipped to the image, or None."""
    keys = ("RegionLocationMinX0", "RegionLocationMinY0", "RegionLocationMaxX1",
            "RegionLocationMaxY1")  # fmt: skip
    try:
        x0, y0, x1, y1 = (int(item.get(k)) for k in keys)
    except (TypeError, ValueError):  # absent, several values, not a number
        return None
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(cols, x1 + 1), min(rows, y1 + 1)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def ultrasound_region(ds: Dataset, rows: int, cols: int) -> Region | None:
    """The largest 2-D region in cm on both axes, clipped to the image.

    Regions whose PhysicalDeltaX and PhysicalDeltaY are finite and positive (calibrated)
    are preferred; only when there is none is the largest region whose deltas are not
    (NaN, Infinity, zero, negative) used, for its crop alone (`spacing_mm` None): its
    bounds are integers that say where the image is whatever its calibration says.
    """
    calibrated: list[tuple[int, tuple[int, int, int, int], tuple[float, float] | None]] = []
    uncalibrated: list[tuple[int, tuple[int, int, int, int], tuple[float, float] | None]] = []
    for i, item in enumerate(ds.get("SequenceOfUltrasoundRegions") or []):
        if item.get("RegionSpatialFormat") != 1:
            continue
        if item.get("PhysicalUnitsXDirection") != 3 or item.get("PhysicalUnitsYDirection") != 3:
            continue
        crop = _region_crop(item, rows, cols)
        if crop is None:
            continue
        dx = _finite_positive(item.get("PhysicalDeltaX"))
        dy = _finite_positive(item.get("PhysicalDeltaY"))
        if dx is None or dy is None:
            uncalibrated.append((i, crop, None))
        else:
            calibrated.append((i, crop, (dy * 10.0, dx * 10.0)))
    usable = calibrated or uncalibrated
    if not usable:
        return None
    best = max(usable, key=lambda u: (u[1][2] - u[1][0]) * (u[1][3] - u[1][1]))  # first on ties
    return Region(crop=best[1], spacing_mm=best[2], index=best[0], n_usable=len(usable))


def pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    """Pixel Spacing (0028,0030) as (row, column) mm, or None unless both are finite and > 0."""
    value = ds.get("PixelSpacing")
    if not isinstance(value, list | MultiValue) or len(value) != 2:
        return None
    row, col = (_finite_positive(v) for v in value)
    return (row, col) if row is not None and col is not None else None


def calibration(ds: Dataset, rows: int, cols: int) -> Calibration:
    """The crop and mm/pixel of a DICOM image (rules in `appliance.io.dicom`), with notes."""
    region = ultrasound_region(ds, rows, cols)
    notes: list[str] = []
    if region is not None:
        x0, y0, x1, y1 = region.crop
        notes.append(
            f"cropped to ultrasound region {region.index + 1} ({x1 - x0} x {y1 - y0} pixels; "
            f"{region.n_usable} usable region(s))"
        )
        if region.spacing_mm is not None:
            return Calibration(region.crop, region.spacing_mm, tuple(notes))
    spacing = pixel_spacing(ds)
    if region is not None:
        fallback = "pixel spacing from Pixel Spacing" if spacing else "sizes in pixels"
        notes.append(
            f"the ultrasound region's calibration is not a finite positive number; {fallback}"
        )
    else:
        notes.append("pixel spacing from Pixel Spacing" if spacing else "no pixel calibration")
    return Calibration(region.crop if region is not None else None, spacing, tuple(notes))


def window_to_uint8(values: NDArray[Any], center: float, width: float, function: str) -> Frame:
    """DICOM VOI windowing (PS3.3 C.11.2.1.2/3) onto 0..255."""
    x = values.astype(np.float64)
    if function == "SIGMOID":
        out = 255.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    else:
        if function == "LINEAR":  # LINEAR_EXACT uses center and width as they are
            center, width = center - 0.5, width - 1.0
        out = np.clip(((x - center) / max(width, 1e-9) + 0.5) * 255.0, 0.0, 255.0)
    return np.rint(out).astype(np.uint8)


def palette_to_rgb(arr: NDArray[Any], ds: Dataset) -> NDArray[np.uint8]:
    """PALETTE COLOR indices to 8-bit RGB."""
    bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    if "RedPaletteColorLookupTableData" in ds:
        # Read here rather than by apply_color_lut: pydicom 3.0 reads 16-bit LUT data in
        # little-endian order even in a big-endian file (OBXXXX1A_expb.dcm comes out black).
        entries, first = ds.RedPaletteColorLookupTableDescriptor[:2]
        entries = int(entries) or 65536
        order = "<" if ds.original_encoding[1] is not False else ">"
        luts: list[NDArray[Any]] = []
        for colour in ("Red", "Green", "Blue"):
            data = ds[f"{colour}PaletteColorLookupTableData"].value
            if not isinstance(data, bytes):  # VR US: already a list of numbers
                luts.append(np.asarray(data, dtype=np.uint16)[:entries])
                continue
            width = len(data) // entries
            if width not in (1, 2):
                raise ValueError(f"{len(data)} bytes of {colour} LUT data for {entries} entries")
            luts.append(np.frombuffer(data, f"{order}u{width}", count=entries))
        idx = np.clip(arr.astype(np.int64) - int(first), 0, entries - 1)
        rgb = np.stack([lut[idx] for lut in luts], axis=-1)
    else:  # segmented LUTs: pydicom handles their byte order
        rgb = apply_color_lut(arr, ds)[..., :3]
    if bits > 8:  # 16-bit entries: the top 8 bits
        rgb = rgb.astype(np.uint16) >> 8
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _first(value: Any) -> float | None:
    """The first of a multi-valued DS (Window Center/Width), as a float."""
    if isinstance(value, list | MultiValue):
        value = value[0] if len(value) else None
    return float(value) if value is not None and value != "" else None


def _monochrome(raw: list[NDArray[Any]], ds: Dataset) -> tuple[list[Frame], str | None]:
    if all(a.dtype == np.uint8 for a in raw):
        bits = int(ds.get("BitsStored") or 8)
        if bits >= 8:
            return list(raw), None
        scale = 255.0 / (2**bits - 1)  # e.g. 1-bit 0/1 to 0/255
        frames = [np.clip(np.rint(a * scale), 0, 255).astype(np.uint8) for a in raw]
        return frames, f"{bits}-bit values scaled to 0..255"
    values = [apply_modality_lut(a, ds) for a in raw]
    voi = ds.get("VOILUTSequence")
    if voi and "LUTDescriptor" in voi[0] and "LUTData" in voi[0]:
        top = 2 ** int(voi[0].LUTDescriptor[2]) - 1
        out = [apply_voi(v.astype(np.int64), ds).astype(np.float64) * (255.0 / top) for v in values]
        return [np.clip(np.rint(o), 0, 255).astype(np.uint8) for o in out], "VOI LUT applied"
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    if center is not None and width is not None:
        c, w = center, width
        if function in ("LINEAR", "LINEAR_EXACT", "SIGMOID") and w >= 1:
            frames = [window_to_uint8(v, c, w, function) for v in values]
            return frames, f"window applied (center {c:g}, width {w:g})"
    return rescale_to_uint8(values), "rescaled min-max to 0..255 (no VOI window)"


def to_grey(
    raw: list[NDArray[Any]], ds: Dataset, photometric: str
) -> tuple[list[Frame], list[str]]:
    """Decoded frames of `ds` (photometric as stored) to greyscale uint8, with notes on how."""
    notes: list[str] = []
    if photometric == "PALETTE COLOR":
        frames = [rgb_to_grey(palette_to_rgb(a, ds)) for a in raw]
        notes.append("converted PALETTE COLOR to greyscale")
    elif raw[0].ndim == 3:  # RGB, or YBR already converted to RGB by pydicom / the decoder
        if all(a.dtype == np.uint8 for a in raw):
            frames = [rgb_to_grey(a) for a in raw]
        else:
            weights = np.array([0.299, 0.587, 0.114])
            frames = rescale_to_uint8([a[..., :3].astype(np.float64) @ weights for a in raw])
        notes.append(f"converted {photometric} to greyscale")
    else:
        frames, note = _monochrome(raw, ds)
        notes += [note] if note else []
    if photometric == "MONOCHROME1":
        frames = [255 - f for f in frames]
        notes.append("MONOCHROME1 inverted")
    return frames, notes
