"""The hostile corpus is what its table says: each kind really has its defect, and only it.

No node runs here: these checks keep the live test honest (a "bomb" that does not inflate,
or a "conflict" that is not one, would let a broken node pass).
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from appliance.io.sample_data import pydicom_data_files, ultrasound_sample_files
from tests.e2e.hostile import corpus as corpus_module
from tests.e2e.hostile.corpus import Corpus, Sources, build_corpus
from tests.e2e.hostile.images import deflate_zeros, png_chunks

pytestmark = pytest.mark.skipif(
    not ultrasound_sample_files(), reason="pydicom-data is not installed (pip install '.[demo]')"
)

GOOD_KINDS = {"good_sample", "good_png", "good_dicom", "good_busi"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    base = tmp_path_factory.mktemp("corpus")
    key = base / "pseudonym.key"
    key.write_bytes(os.urandom(32))
    samples = {p.name: p for p in pydicom_data_files()}
    yield build_corpus(base / "staging", Sources(samples, samples["MR2_UNCR.dcm"], [], key))


def _path(c: Corpus, rel: bytes) -> Path:
    return Path(os.fsdecode(os.fsencode(c.staging) + b"/" + rel))


def _one(c: Corpus, kind: str) -> Path:
    (entry,) = [e for e in c.entries if e.kind == kind and b"/" not in e.rel]
    return _path(c, entry.rel)


def test_at_least_40_hostile_kinds_each_in_the_table(corpus: Corpus) -> None:
    doc = corpus_module.__doc__ or ""
    cells = {line.split("|")[1].strip() for line in doc.splitlines() if line.startswith("| ")}
    table = {c for c in cells if not c.startswith("-")} - {"kind"}
    hostile = corpus.kinds() - GOOD_KINDS
    assert len(hostile) >= 40, sorted(hostile)
    assert hostile == table, (sorted(hostile - table), sorted(table - hostile))


def test_regular_files_have_unique_content_but_the_declared_resend(corpus: Corpus) -> None:
    seen: dict[str, bytes] = {}
    for e in corpus.entries:
        path = _path(corpus, e.rel)
        if path.is_symlink() or not path.is_file() or path.stat().st_size > (64 << 20):
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest in seen and e.kind != "resend":
            pytest.fail(f"{e.label} has the same content as {seen[digest]!r}")
        seen.setdefault(digest, e.rel)


def test_deflate_zeros_inflates_exactly() -> None:
    n = (3 << 20) + 12345
    for wrapped in (False, True):
        data = deflate_zeros(n, prefix=b"head", zlib_wrapped=wrapped)
        out = zlib.decompress(data, 15 if wrapped else -15)
        assert out == b"head" + bytes(n)
        assert len(data) < n // 500


def test_deflate_bomb_declares_1_gib_of_pixels_in_about_1_mb(corpus: Corpus) -> None:
    path = _one(corpus, "dicom_deflate_bomb")
    data = path.read_bytes()
    assert 0.9e6 < len(data) < 1.5e6
    meta = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
    assert meta.file_meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian
    start = data.index(b"DICM") + 4
    (meta_len,) = struct.unpack("<I", data[start + 8 : start + 12])
    head = zlib.decompressobj(-15).decompress(data[start + 12 + meta_len :], 1 << 20)
    at = head.index(b"\xe0\x7f\x10\x00OB\x00\x00")
    (declared,) = struct.unpack("<I", head[at + 8 : at + 12])
    assert declared >= 1 << 30


def test_jpeg_scan_bomb_repeats_a_scan_thousands_of_times(corpus: Corpus) -> None:
    data = _one(corpus, "jpeg_scan_bomb").read_bytes()
    assert len(data) < 200_000
    assert data.count(b"\xff\xda") >= 4000
    with Image.open(_one(corpus, "jpeg_scan_bomb")) as im:
        assert im.size == (2000, 2000) and im.info.get("progressive")


def test_png_defects(corpus: Corpus) -> None:
    bad = png_chunks(_one(corpus, "png_bad_crc").read_bytes())
    raw = _one(corpus, "png_bad_crc").read_bytes()
    crcs_ok = []
    pos = 8
    for kind, payload in bad:
        (crc,) = struct.unpack(">I", raw[pos + 8 + len(payload) : pos + 12 + len(payload)])
        crcs_ok.append(crc == zlib.crc32(kind + payload))
        pos += 12 + len(payload)
    assert crcs_ok.count(False) == 1
    bomb = dict(png_chunks(_one(corpus, "png_metadata_bomb").read_bytes()))
    assert set(bomb) >= {b"iCCP", b"zTXt", b"IDAT"}
    for blank in ("png_blank", "png_blank_noise"):
        with Image.open(_one(corpus, blank)) as im:
            assert len(np.unique(np.asarray(im))) <= 3
    for small, size in (("png_1x1", (1, 1)), ("png_1x500", (500, 1)), ("png_5x500", (500, 5))):
        with Image.open(_one(corpus, small)) as im:
            assert im.size == size
    with Image.open(_one(corpus, "png_16bit")) as im:
        assert im.mode == "I;16"


def test_dicom_identities(corpus: Corpus) -> None:
    first = pydicom.dcmread(_path(corpus, b"good_phantom_301.dcm"))
    conflict = pydicom.dcmread(_one(corpus, "uid_conflict"))
    resend = pydicom.dcmread(_one(corpus, "resend_implicit"))
    assert conflict.SOPInstanceUID == first.SOPInstanceUID == resend.SOPInstanceUID
    assert conflict.PatientID != first.PatientID == resend.PatientID
    assert not np.array_equal(conflict.pixel_array, first.pixel_array)
    assert np.array_equal(resend.pixel_array, first.pixel_array)
    assert resend.file_meta.TransferSyntaxUID != first.file_meta.TransferSyntaxUID
    rle = pydicom.dcmread(_one(corpus, "resend_rle"))
    orig = pydicom.dcmread(_path(corpus, b"good_OBXXXX1A.dcm"))
    assert rle.SOPInstanceUID == orig.SOPInstanceUID
    assert np.array_equal(rle.pixel_array, orig.pixel_array)


def test_dicom_header_defects(corpus: Corpus) -> None:
    region = pydicom.dcmread(_one(corpus, "dicom_nan_region")).SequenceOfUltrasoundRegions[0]
    assert math.isnan(region.PhysicalDeltaX) and math.isinf(region.PhysicalDeltaY)
    spacing = pydicom.dcmread(_one(corpus, "dicom_nan_spacing")).PixelSpacing
    assert not any(math.isfinite(float(v)) for v in spacing)
    big = pydicom.dcmread(_one(corpus, "dicom_65535"))
    assert (big.Rows, big.Columns) == (65535, 65535) and len(big.PixelData) == 64
    assert pydicom.dcmread(_one(corpus, "dicom_rows_zero")).Rows == 0
    bare = _one(corpus, "dicom_no_preamble").read_bytes()
    assert b"DICM" not in bare[:256]
    assert pydicom.dcmread(_one(corpus, "dicom_no_preamble"), force=True).Modality == "US"
    patient = pydicom.dcmread(_path(corpus, b"DOE^JANE_MRN123456.dcm"))
    assert (str(patient.PatientName), patient.PatientID) == ("DOE^JANE", "MRN123456")


def test_special_files(corpus: Corpus) -> None:
    sparse = _one(corpus, "sparse_2gib").stat()
    assert sparse.st_size == 2 << 30 and sparse.st_blocks * 512 < (1 << 20)
    assert stat.S_ISFIFO(_one(corpus, "fifo").lstat().st_mode)
    assert stat.S_ISSOCK(_one(corpus, "unix_socket").lstat().st_mode)
    for kind in ("symlink_key", "symlink_passwd", "symlink_dangling"):
        assert _one(corpus, kind).is_symlink()
    assert not _one(corpus, "symlink_dangling").exists()
    with pytest.raises(OSError, match="symbolic links"):
        os.stat(_path(corpus, b"h_loop_a.dcm"))
    assert _path(corpus, b"h_folder.dcm").is_dir()
    assert _path(corpus, b"good_caf\xe9.png").is_file()
