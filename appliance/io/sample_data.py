"""Locate the real DICOM files shipped by the optional PyPI package `pydicom-data`.

The package (module `data_store`, installed with the `demo` extra) holds pydicom's test
files in `data_store/data/`; the demo and the reader tests use its ultrasound ones.
Nothing is imported from it: the files are found through the package's installed
metadata, so a missing package simply gives no files.
"""

from __future__ import annotations

import importlib.util
import struct
import warnings
import zlib
from importlib import metadata
from pathlib import Path
from typing import Any

import pydicom
from numpy.typing import NDArray
from pydicom.errors import BytesLengthException, InvalidDicomError

_DISTRIBUTION = "pydicom-data"
_DATA_PREFIX = ("data_store", "data")


def _data_dir() -> Path | None:
    spec = importlib.util.find_spec("data_store")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).resolve().parent / "data"
    return folder if folder.is_dir() else None


def pydicom_data_files() -> list[Path]:
    """Every file in pydicom-data's `data_store/data/`, sorted by name; [] if not installed."""
    try:
        dist = metadata.distribution(_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return []
    listed = [
        Path(str(dist.locate_file(f))).resolve()
        for f in dist.files or []
        if tuple(f.parts[:2]) == _DATA_PREFIX and len(f.parts) > 2
    ]
    files = [p for p in listed if p.is_file()]
    if not files:  # an install without a RECORD: list the folder instead
        folder = _data_dir()
        files = [p for p in folder.iterdir() if p.is_file()] if folder else []
    return sorted(files, key=lambda p: p.name)


def ultrasound_sample_files() -> list[Path]:
    """The pydicom-data files whose Modality is US (headers only are read), sorted by name."""
    found = []
    for path in pydicom_data_files():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # some samples are deliberately malformed
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except (InvalidDicomError, BytesLengthException, OSError, EOFError, ValueError,
                TypeError, KeyError, NotImplementedError, struct.error, zlib.error):  # fmt: skip
            continue
        if str(ds.get("Modality") or "").strip().upper() == "US":
            found.append(path)
    return found


def ultrasound_sample_frames(max_frames: int) -> list[list[NDArray[Any]]]:
    """The frames (at most `max_frames` each) of every `ultrasound_sample_files` file the
    node's reader accepts, one list per file: a sample the node refuses never reaches a
    model, so it is skipped (`trainer.site_report`, `trainer.ood_layers`, the OOD tests)."""
    from appliance.errors import InputError
    from appliance.io.reader import read_file

    out = []
    for path in ultrasound_sample_files():
        try:
            out.append(list(read_file(path, max_frames=max_frames).frames))
        except InputError:
            continue
    return out
