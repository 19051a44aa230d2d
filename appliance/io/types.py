"""What a reader returns: greyscale frames and the metadata the pipeline needs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

Frame = NDArray[np.uint8]
"""One greyscale frame, shape (rows, columns), uint8."""


@dataclass(frozen=True)
class ImageMeta:
    """Metadata of one input file.

    Identifiers (patient, study, SOP UIDs) are kept on the node only: they are stored in
    the local results database and never logged in clear or sent to the federation.
    """

    source_format: str  # "dicom", "png", "jpeg", "bmp"
    modality: str | None = None  # DICOM Modality, e.g. "US"; None for plain images
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    patient_id: str | None = None
    patient_name: str | None = None
    study_date: str | None = None
    manufacturer: str | None = None
    model_name: str | None = None
    photometric: str | None = None  # as stored, before conversion to greyscale
    bits_stored: int | None = None
    # Millimetres per pixel (row spacing, column spacing) of the returned frames, or None
    # when the file does not calibrate its pixels.
    pixel_spacing_mm: tuple[float, float] | None = None
    # Crop applied to the stored image, (x0, y0, x1, y1) in stored pixels, x1/y1 exclusive.
    crop: tuple[int, int, int, int] | None = None
    n_frames_total: int = 1
    frame_indices: tuple[int, ...] = (0,)
    notes: tuple[str, ...] = field(default_factory=tuple)  # e.g. "frames sampled: 8 of 120"


@dataclass(frozen=True)
class LoadedImage:
    """Frames of one file (one for a still image, several for cine) and its metadata."""

    frames: list[Frame]
    meta: ImageMeta


@dataclass(frozen=True)
class ReadLimits:
    """What one input may cost to read: checked from headers before anything is decoded.

    `max_bytes` bounds the file and any inflated (deflate) dataset; `max_pixels` bounds
    rows x columns x frames decoded; `min_side` rejects images too small to judge;
    `max_jpeg_scans` rejects JPEG streams whose scan count makes decoding a runaway.
    """

    max_frames: int = 16
    max_pixels: int = 50_000_000
    max_bytes: int = 1 << 30
    min_side: int = 32
    max_jpeg_scans: int = 100
