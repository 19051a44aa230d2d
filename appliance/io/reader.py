"""The one entry point the pipeline calls: sniff a file's content and hand it to its reader.

The content decides, never the name: a DICOM (the "DICM" marker after the 128-byte
preamble, or a preamble-less dataset starting in group 0000/0002/0008) goes to
`read_dicom`; PNG, JPEG and BMP (by their magic bytes) go to `read_image`; anything else
is `UnsupportedFormatError`. When the name's extension (or `claimed_suffix`, for a
snapshot whose own name has none) claims another format, a note says so in
`ImageMeta.notes`.

What comes back is then judged (`appliance.io.content`): too small (`min_side`) or
blank is `NoContentError`; blank frames of a cine are left out with a note.

This runs in the caller's process; `appliance.io.sandbox.Decoder` runs the same function
in a child process that can be stopped (the node reads every input that way).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from appliance.errors import NoContentError, UnsupportedFormatError
from appliance.io.bounds import describe_content, resolve_limits
from appliance.io.content import judge_content
from appliance.io.dicom import is_dicom_head, read_dicom
from appliance.io.files import open_input, read_head
from appliance.io.images import read_image, sniff_image_format
from appliance.io.types import LoadedImage, ReadLimits

_EXTENSIONS = {
    ".dcm": "dicom",
    ".dicom": "dicom",
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".bmp": "bmp",
}


def sniff_format(head: bytes) -> str | None:
    """ "dicom", "png", "jpeg" or "bmp" from the first 132 bytes of a file, or None."""
    image = sniff_image_format(head)
    if image is not None:
        return image
    return "dicom" if is_dicom_head(head) else None


def read_file(
    path: Path,
    *,
    max_frames: int | None = None,
    max_pixels: int | None = None,
    limits: ReadLimits | None = None,
    claimed_suffix: str | None = None,
) -> LoadedImage:
    """Read a DICOM, PNG, JPEG or BMP file as greyscale uint8 frames plus metadata.

    Parameters
    ----------
    path:
        The file; it is only read, never modified.
    max_frames, max_pixels:
        The older form of `limits` (most frames kept from a cine, evenly spaced; limit on
        rows x columns x frames decoded); the other limits take their defaults.
    limits:
        Everything one input may cost (`ReadLimits`); not together with the two above.
    claimed_suffix:
        The extension the file was received with (".png"), when `path` is a copy whose
        name has lost it; `path.suffix` otherwise.

    Raises
    ------
    appliance.errors.InputError
        One of its subclasses, with a `reason` for a person, for any file that cannot be
        analysed: empty, not a regular file, unreadable, unsupported, corrupt, no pixels,
        not ultrasound, too large, too costly to decode, too small or blank.
    """
    path = Path(path)
    limits = resolve_limits(limits, max_frames, max_pixels)
    with open_input(path, max_bytes=limits.max_bytes) as fh:
        head = read_head(fh, path, 512)
    kind = sniff_format(head)
    if kind is None:
        raise UnsupportedFormatError(
            "the content is not a DICOM, PNG, JPEG or BMP image (it looks like "
            f"{describe_content(head)}): export the image again in one of these formats",
            path=path,
        )
    reader = read_dicom if kind == "dicom" else read_image
    loaded = reader(path, limits=limits)
    notes = list(loaded.meta.notes)
    suffix = path.suffix if claimed_suffix is None else claimed_suffix
    claimed = _EXTENSIONS.get(suffix.lower())
    if claimed is not None and claimed != kind:
        notes.append(f"named {suffix.lower()} but the content is {kind.upper()}")
    verdict = judge_content(loaded.frames, limits.min_side, loaded.meta.frame_indices)
    if verdict.reason is not None:
        raise NoContentError(verdict.reason, path=path)
    if len(verdict.keep) < len(loaded.frames):
        kept = [loaded.meta.frame_indices[i] for i in verdict.keep]
        frames = [loaded.frames[i] for i in verdict.keep]
        meta = dataclasses.replace(loaded.meta, frame_indices=tuple(kept))
        loaded = LoadedImage(frames=frames, meta=meta)
    if notes != list(loaded.meta.notes) or verdict.notes:
        meta = dataclasses.replace(loaded.meta, notes=(*notes, *verdict.notes))
        loaded = dataclasses.replace(loaded, meta=meta)
    return loaded
