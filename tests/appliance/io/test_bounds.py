"""What one input may cost, checked before decoding (issue 8 items 4 and 5), and reasons
that never quote a file's content or name."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.encaps import encapsulate

from appliance.errors import (
    CorruptFileError,
    ImageTooLargeError,
    InputTooCostlyError,
    NotRegularFileError,
    UnsupportedFormatError,
)
from appliance.io.bounds import codestream_size, describe_content, jpeg_scan_count
from appliance.io.reader import read_file
from appliance.io.types import ReadLimits
from tests.appliance.io.samples import (
    deflate_bomb,
    runaway_jpeg,
    small_us_dataset,
    write,
)

REPO = Path(__file__).resolve().parents[3]


def jpeg_bytes(side: int = 64, **options: object) -> bytes:
    y, x = np.mgrid[0:side, 0:side]
    buf = io.BytesIO()
    Image.fromarray(((x * 3 + y) % 256).astype(np.uint8)).save(buf, "JPEG", **options)
    return buf.getvalue()


def test_scan_count_of_baseline_progressive_and_runaway() -> None:
    assert jpeg_scan_count(jpeg_bytes(), stop_after=100) == 1
    progressive = jpeg_scan_count(jpeg_bytes(progressive=True), stop_after=100)
    assert 2 <= progressive <= 12
    assert jpeg_scan_count(runaway_jpeg(64, 500), stop_after=10**6) == progressive + 500
    assert jpeg_scan_count(runaway_jpeg(64, 500), stop_after=100) == 101  # stops early
    assert jpeg_scan_count(b"not a jpeg", stop_after=100) == 0


def test_scans_inside_an_exif_thumbnail_are_not_counted() -> None:
    thumb = jpeg_bytes(16)  # a JPEG with its own SOS, inside an APP1 segment
    app1 = b"\xff\xe1" + (len(thumb) + 2).to_bytes(2, "big") + thumb
    data = jpeg_bytes()
    assert jpeg_scan_count(data[:2] + app1 + data[2:], stop_after=100) == 1


def test_codestream_size() -> None:
    assert codestream_size(jpeg_bytes(48)) == (48, 48)
    siz = b"\xff\x4f\xff\x51" + b"\x00\x29\x00\x00" + (640).to_bytes(4, "big")
    siz += (480).to_bytes(4, "big") + bytes(8)
    assert codestream_size(siz + bytes(64)) == (640, 480)
    assert codestream_size(b"\xff\xd8\xff") is None and codestream_size(b"junk") is None


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"root:$6$abc:19000:0:99999:7:::\ndaemon:*:19000\n", "text"),
        (b"PK\x03\x04" + bytes(40), "a ZIP archive"),
        (b"\x7fELF\x02\x01\x01" + bytes(40), "an ELF executable"),
        (b"%PDF-1.7\n", "a PDF document"),
        (b"<?xml version='1.0'?><a/>", "text (XML or HTML)"),
        (bytes(range(256)) * 2, "unrecognised binary data"),
    ],
)
def test_describe_content_never_quotes_bytes(head: bytes, kind: str) -> None:
    assert describe_content(head).startswith(kind)


def test_a_shadow_file_reason_does_not_quote_it(tmp_path: Path) -> None:
    path = tmp_path / "DOE^JANE_MRN123456.dcm"
    path.write_bytes(b"root:$6$saltsalt$hashhashhash:19000:0:99999:7:::\n" * 4)
    with pytest.raises(UnsupportedFormatError) as info:
        read_file(path)
    assert "it looks like text" in info.value.reason
    assert "root" not in info.value.reason and "hash" not in info.value.reason
    assert "DOE" not in info.value.reason and "MRN" not in info.value.reason


def test_runaway_progressive_jpeg_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "scan.jpg"
    path.write_bytes(runaway_jpeg(1024, 2000))  # ~30 KB; Pillow decodes it for seconds
    started = time.monotonic()
    with pytest.raises(InputTooCostlyError) as info:
        read_file(path)
    assert time.monotonic() - started < 0.5
    assert "the JPEG image has more than 100 scans (101 counted" in info.value.reason
    assert "processing.max_jpeg_scans" in info.value.reason
    assert info.value.code == "too_costly"


def test_encapsulated_dicom_jpeg_frames_are_counted_and_sized(tmp_path: Path) -> None:
    def dicom(frame: bytes, rows: int, cols: int) -> Path:
        ds = small_us_dataset(rows, cols, PixelData=encapsulate([frame]))
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"  # JPEG Baseline
        ds["PixelData"].VR = "OB"
        return write(ds, tmp_path / f"{rows}_{len(frame)}.dcm")

    runaway = runaway_jpeg(64, 300)
    with pytest.raises(InputTooCostlyError, match="the DICOM image has more than 100 scans"):
        read_file(dicom(runaway, 64, 64))
    with pytest.raises(CorruptFileError, match=r"is a 64 x 64 pixel codestream, but the DICOM"):
        read_file(dicom(jpeg_bytes(64), 48, 48))  # a codestream larger than the header
    assert read_file(dicom(jpeg_bytes(64), 64, 64)).frames[0].shape == (64, 64)


def test_a_file_over_max_bytes_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "big.dcm"
    with path.open("wb") as fh:  # sparse: 1 GiB + 1 byte that costs no disk
        fh.truncate((1 << 30) + 1)
    started = time.monotonic()
    with pytest.raises(ImageTooLargeError) as info:
        read_file(path)
    assert time.monotonic() - started < 0.5
    assert "1,073,741,825 bytes, more than the 1,073,741,824 bytes" in info.value.reason
    assert "ingest.max_input_bytes" in info.value.reason


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "scan.dcm"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFileError, match=r"this is a FIFO \(named pipe\)"):
        read_file(fifo)


def test_deflate_bomb_is_refused_within_its_header_bound(tmp_path: Path) -> None:
    path = deflate_bomb(tmp_path / "bomb.dcm", 256 << 20)  # 1.2 MB inflating to 256 MiB
    with pytest.raises(ImageTooLargeError) as info:
        read_file(path)
    assert "the deflated DICOM dataset inflates past" in info.value.reason
    assert "64 x 64 pixels x 1 frame(s) (4,096 bytes of pixels)" in info.value.reason


def test_deflate_bomb_peak_memory_stays_small(tmp_path: Path) -> None:
    path = deflate_bomb(tmp_path / "bomb.dcm", 256 << 20)
    code = textwrap.dedent(
        """
        import resource, sys
        from pathlib import Path
        from appliance.io.reader import read_file
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            read_file(Path(sys.argv[1]))
        except Exception as exc:
            print(type(exc).__name__)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
        timeout=60,
    ).stdout.split()
    assert out[0] == "ImageTooLargeError"
    assert int(out[1]) < 64, f"reading the bomb raised peak RSS by {out[1]} MiB"


def test_a_real_deflated_image_is_still_read(tmp_path: Path) -> None:
    pixels = (np.arange(64 * 80) * 7 % 251).astype(np.uint8).reshape(64, 80)  # compresses
    ds = small_us_dataset(64, 80, PixelData=pixels.tobytes())
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    loaded = read_file(write(ds, tmp_path / "deflated.dcm"))
    np.testing.assert_array_equal(loaded.frames[0], pixels)
    size = (tmp_path / "deflated.dcm").stat().st_size
    assert size < 64 * 80
    limits = ReadLimits(max_bytes=size)  # the file fits, its inflated dataset does not
    with pytest.raises(ImageTooLargeError, match="inflates past"):
        read_file(tmp_path / "deflated.dcm", limits=limits)
