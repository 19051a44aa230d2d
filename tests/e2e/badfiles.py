"""Bad inputs of every kind the node must reject, written as real files."""

from __future__ import annotations

import os
import socket
import struct
import zlib
from pathlib import Path

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def png_claiming_size(path: Path, width: int, height: int) -> None:
    """A PNG whose IHDR claims width x height, with a tiny (inconsistent) IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def dicom_without_pixels(path: Path) -> None:
    """A valid DICOM (a Basic Text SR) that has no image."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.PatientID = "TEST-NOPIX"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.save_as(path, enforce_file_format=True)


def sparse_file(path: Path, size: int) -> None:
    """A file of `size` bytes that occupies (almost) no disk: a hole, reading as zeros."""
    path.touch()
    os.truncate(path, size)


def unix_socket_file(path: Path) -> None:
    """A unix socket at `path` (the socket file stays after the socket is closed)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        if len(os.fsencode(path)) < 100:
            s.bind(str(path))
            return
        # A socket address holds at most 108 bytes: bind through a short /proc path instead.
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            s.bind(f"/proc/self/fd/{folder}/{path.name}")
        finally:
            os.close(folder)


def write_bad_files(folder: Path, real_us_dicom: Path, other_modality: Path) -> dict[str, str]:
    """Write the bad inputs; returns {file name: what it is}."""
    (folder / "zero_bytes.dcm").write_bytes(b"")
    data = real_us_dicom.read_bytes()
    (folder / "truncated.dcm").write_bytes(data[: len(data) // 2])
    (folder / "random_bytes.dcm").write_bytes(os.urandom(8192))
    (folder / "text.png").write_text("this is a note, not an image\n")
    dicom_without_pixels(folder / "no_pixels.dcm")
    (folder / "other_modality.dcm").write_bytes(other_modality.read_bytes())
    png_claiming_size(folder / "huge_header.png", 100_000, 100_000)
    return {
        "zero_bytes.dcm": "empty",
        "truncated.dcm": "truncated DICOM",
        "random_bytes.dcm": "random bytes",
        "text.png": "text named .png",
        "no_pixels.dcm": "DICOM without pixel data",
        "other_modality.dcm": "non-ultrasound DICOM",
        "huge_header.png": "100000 x 100000 header",
    }
