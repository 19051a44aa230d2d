"""Decoding in stoppable child processes (issue 8 item 4): real children, real signals."""

from __future__ import annotations

import csv
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from appliance.errors import (
    CorruptFileError,
    InputTooCostlyError,
    NotUltrasoundError,
    TransientError,
    UnsupportedFormatError,
)
from appliance.io.reader import read_file
from appliance.io.sandbox import Decoder
from appliance.io.types import ReadLimits
from tests.appliance.io.samples import (
    needs_samples,
    runaway_jpeg,
    sample,
    small_us_dataset,
    write,
)
from tests.conftest import BUSI_DIR, BUSI_MANIFEST, needs_busi

LIMITS = ReadLimits()
NO_SCAN_LIMIT = ReadLimits(max_jpeg_scans=10**6)  # so that only the time limit can stop it


def speckle_png(path: Path, rows: int = 120, cols: int = 160, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(20, 220, (rows, cols), dtype=np.uint8)).save(path, "PNG")
    return path


@pytest.fixture(scope="module")
def decoder() -> Iterator[Decoder]:
    with Decoder(2, LIMITS, timeout_s=30, memory_mb=1024) as dec:
        yield dec


def test_decode_matches_read_file(tmp_path: Path, decoder: Decoder) -> None:
    png = speckle_png(tmp_path / "0123abcd")  # a spool snapshot: no extension of its own
    loaded = decoder.decode(png, claimed_suffix=".dcm")
    expected = read_file(png, claimed_suffix=".dcm")
    np.testing.assert_array_equal(loaded.frames[0], expected.frames[0])
    assert loaded.meta == expected.meta
    assert loaded.meta.notes == ("named .dcm but the content is PNG",)
    assert loaded.frames[0].flags.writeable and loaded.frames[0].dtype == np.uint8


def test_refusals_come_back_as_the_same_error(tmp_path: Path, decoder: Decoder) -> None:
    text = tmp_path / "notes"
    text.write_text("Patient called, exam rescheduled.\n")
    with pytest.raises(UnsupportedFormatError) as info:
        decoder.decode(text, claimed_suffix=".png")
    assert info.value.path == text and "it looks like text" in info.value.reason
    ct = write(small_us_dataset(64, 64, Modality="CT"), tmp_path / "ct")
    with pytest.raises(NotUltrasoundError) as ct_info:
        decoder.decode(ct, claimed_suffix=None)
    assert ct_info.value.modality == "CT"
    assert ct_info.value.reason == read_file_error(ct).reason


@needs_samples
def test_non_finite_region_calibration_comes_back_uncalibrated(
    tmp_path: Path, decoder: Decoder
) -> None:
    """The child sends no NaN or Infinity (the parent would call that subverted): a region
    whose deltas are NaN / Infinity is read as uncalibrated before it leaves the decoder."""
    ds = pydicom.dcmread(sample("OBXXXX1A.dcm"))
    ds.SequenceOfUltrasoundRegions[0].PhysicalDeltaX = math.nan
    ds.SequenceOfUltrasoundRegions[0].PhysicalDeltaY = math.inf
    ds.save_as(tmp_path / "nan_region")
    loaded = decoder.decode(tmp_path / "nan_region", claimed_suffix=".dcm")
    assert loaded.meta.pixel_spacing_mm is None and loaded.meta.crop == (120, 60, 800, 519)
    assert loaded.meta == read_file(tmp_path / "nan_region", claimed_suffix=".dcm").meta


def read_file_error(path: Path) -> NotUltrasoundError:
    with pytest.raises(NotUltrasoundError) as info:
        read_file(path)
    return info.value


def test_runaway_decode_is_killed_at_the_timeout_and_the_pool_recovers(tmp_path: Path) -> None:
    runaway = tmp_path / "runaway"
    runaway.write_bytes(runaway_jpeg(1024, 4000))  # seconds of decoding in-process
    good = speckle_png(tmp_path / "good")
    with Decoder(1, NO_SCAN_LIMIT, timeout_s=1.0, memory_mb=1024) as dec:
        dec.decode(good, claimed_suffix=".png")  # the child is up
        started = time.monotonic()
        with pytest.raises(InputTooCostlyError) as info:
            dec.decode(runaway, claimed_suffix=".jpg")
        assert time.monotonic() - started < 3.0
        assert info.value.reason.startswith("decoding ran for more than 1 s, the limit")
        assert "processing.decode_timeout_s" in info.value.reason
        assert dec.decode(good, claimed_suffix=".png").frames[0].shape == (120, 160)


def test_out_of_memory_in_the_child_is_too_costly(tmp_path: Path) -> None:
    big = tmp_path / "big"
    Image.new("RGB", (7000, 7000), (10, 20, 30)).save(big, "PNG")  # ~200 MB to decode
    with Decoder(1, LIMITS, timeout_s=30, memory_mb=256) as dec:
        with pytest.raises(InputTooCostlyError) as info:
            dec.decode(big, claimed_suffix=".png")
        assert "more than the 256 MiB a decoder may use" in info.value.reason
        assert dec.decode(speckle_png(tmp_path / "ok"), claimed_suffix=".png").frames


def test_a_decoder_crash_rejects_the_file(tmp_path: Path) -> None:
    runaway = tmp_path / "runaway"
    runaway.write_bytes(runaway_jpeg(1024, 4000))
    with Decoder(1, NO_SCAN_LIMIT, timeout_s=30, memory_mb=1024) as dec:
        dec.decode(speckle_png(tmp_path / "ok"), claimed_suffix=".png")
        (child,) = list(dec._all)  # the one child, to crash it as a decoder bug would
        threading.Timer(0.5, os.kill, (child.proc.pid, signal.SIGSEGV)).start()
        with pytest.raises(CorruptFileError) as info:
            dec.decode(runaway, claimed_suffix=".jpg")
        assert "the image decoder crashed on this file" in info.value.reason
        assert "SIGSEGV" in info.value.reason
        assert dec.decode(speckle_png(tmp_path / "ok2"), claimed_suffix=".png").frames


def test_a_child_that_cannot_start_is_a_transient_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    png = speckle_png(tmp_path / "ok")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    with Decoder(1, LIMITS, timeout_s=5, memory_mb=1024) as dec:
        with pytest.raises(TransientError) as info:
            dec.decode(png, claimed_suffix=".png")
        assert info.value.condition == "resources to start a decoder process"
    monkeypatch.setattr(sys, "executable", "/bin/false")  # starts, exits before ready
    with (
        Decoder(1, LIMITS, timeout_s=5, memory_mb=1024) as dec,
        pytest.raises(TransientError, match="did not become ready"),
    ):
        dec.decode(png, claimed_suffix=".png")


def test_threads_share_the_pool(tmp_path: Path, decoder: Decoder) -> None:
    paths = [speckle_png(tmp_path / f"p{i}", seed=i) for i in range(12)]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = decoder.decode(paths[i], claimed_suffix=".png").frames[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for i, path in enumerate(paths):
        np.testing.assert_array_equal(results[i], read_file(path).frames[0])


def test_a_closed_decoder_refuses(tmp_path: Path) -> None:
    dec = Decoder(1, LIMITS, timeout_s=5, memory_mb=1024)
    dec.close()
    with pytest.raises(RuntimeError, match="closed"):
        dec.decode(speckle_png(tmp_path / "ok"), claimed_suffix=".png")


@needs_busi
def test_busi_through_the_decoder_is_read_as_in_process(decoder: Decoder) -> None:
    with BUSI_MANIFEST.open(newline="") as fh:
        images = [BUSI_DIR / row["image"] for row in csv.DictReader(fh)][::20]
    for path in images:
        loaded = decoder.decode(path, claimed_suffix=".png")
        np.testing.assert_array_equal(loaded.frames[0], read_file(path).frames[0])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


def test_a_busy_decoder_child_leaves_when_its_node_dies_without_closing_it(
    tmp_path: Path,
) -> None:
    # A node that dies (SIGKILL, os._exit with a job past its grace) closes nothing. An idle
    # child sees its pipe close; a busy one must not decode on, unbounded, beside the
    # restarted node's own children.
    from tests.e2e.hostile.images import jpeg_scan_bomb

    bomb = tmp_path / "scans.jpg"
    bomb.write_bytes(jpeg_scan_bomb(side=1500, repeats=6000))
    script = (
        "import os, sys, threading, time\n"
        "from pathlib import Path\n"
        "from appliance.io.sandbox import Decoder\n"
        "from appliance.io.types import ReadLimits\n"
        "d = Decoder(1, ReadLimits(max_jpeg_scans=100000), 300.0, 2048)\n"
        "(c,) = d._all\n"
        "c.wait_ready()\n"
        "threading.Thread(target=d.decode, args=(Path(sys.argv[1]),), daemon=True).start()\n"
        "time.sleep(1.0)\n"
        "print(c.proc.pid, flush=True)\n"
        "os._exit(0)\n"
    )
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", script, str(bomb)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    assert not _alive(pid), "a busy decoder child outlived its node"


def test_kill_all_stops_busy_and_idle_children() -> None:
    decoder = Decoder(2, ReadLimits(), 30.0, 512)
    children = list(decoder._all)
    for c in children:
        c.wait_ready()
    decoder.kill_all()
    assert all(not _alive(c.proc.pid) for c in children)
    with pytest.raises(RuntimeError, match="closed"):
        decoder.decode(Path("/nonexistent.png"))
