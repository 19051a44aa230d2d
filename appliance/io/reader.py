"""The one entry point the pipeline calls: sniff a file's content and hand it to its reader.

The content decides, never the name: a DICOM (the "DICM" marker after the 128-byte
preamble, or a preamble-less dataset starting in group 0000/0002/0008) goes to
`read_dicom`; PNG, JPEG and BMP (by their magic bytes) go to `read_image`; anything else
is `UnsupportedFormatError`. When the name's extension claims another format, a note
says so in `ImageMeta.notes`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from appliance.errors import UnsupportedFormatError
from appliance.io.dicom import is_dicom_head, read_dicom
from appliance.io.images import describe_head, open_input, read_head, read_image, sniff_image_format
from appliance.io.types import LoadedImage

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


def read_file(path: Path, *, max_frames: int = 16, max_pixels: int = 50_000_000) -> LoadedImage:
    """Read a DICOM, PNG, JPEG or BMP file as greyscale uint8 frames plus metadata.

    Parameters
    ----------
    path:
        The file; it is only read, never modified.
    max_frames:
        Most frames kept from a cine (evenly spaced over it, see `appliance.io.dicom`).
    max_pixels:
        Limit on rows x columns x frames to decode; larger files are refused unread.

    Raises
    ------
    appliance.errors.InputError
        One of its subclasses, with a `reason` for a person, for any file that cannot be
        analysed: empty, unreadable, unsupported, corrupt, no pixels, not ultrasound, or
        too large.
    """
    path = Path(path)
    with open_input(path) as fh:
        head = read_head(fh, path)
    kind = sniff_format(head)
    if kind is None:
        raise UnsupportedFormatError(
            f"named {path.name} but the content is not a DICOM, PNG, JPEG or BMP image (it "
            f"begins with {describe_head(head)}): export the image again in one of these "
            "formats",
            path=path,
        )
    if kind == "dicom":
        loaded = read_dicom(path, max_frames=max_frames, max_pixels=max_pixels)
    else:
        loaded = read_image(path, max_pixels=max_pixels)
    claimed = _EXTENSIONS.get(path.suffix.lower())
    if claimed is not None and claimed != kind:
        note = f"named {path.suffix} but the content is {kind.upper()}"
        meta = dataclasses.replace(loaded.meta, notes=(*loaded.meta.notes, note))
        loaded = dataclasses.replace(loaded, meta=meta)
    return loaded
