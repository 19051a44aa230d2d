"""Result files are on disk before the job is committed done, and failed writes leave nothing.

The order of the real system calls is recorded by wrapping `os.fsync` / `os.replace` (the
real calls still run): a file's content must be fsync'd before it is renamed into place,
and the folder fsync'd after the last rename and before the writer returns (POSIX keeps a
rename in the page cache until its folder is synced). A power cut cannot be staged in a
test; this order is what makes one harmless.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from appliance.results.durable import make_folder, write_atomic
from appliance.results.writers import (
    job_result_dir,
    sync_job_dir,
    write_frame_files,
    write_json,
    write_result_json,
)


def _frame() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, size=(120, 160), dtype=np.uint8)
    mask = np.zeros_like(frame)
    mask[30:70, 40:100] = 1
    return frame, mask


@pytest.fixture
def syscalls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """("fsync", path) and ("replace", final name) in the order they really happened."""
    events: list[tuple[str, str]] = []
    real_fsync: Callable[[int], None] = os.fsync
    real_replace: Callable[..., None] = os.replace

    def fsync(fd: int) -> None:
        real_fsync(fd)
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        real_replace(src, dst, *args, **kwargs)
        events.append(("replace", os.fspath(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def _index(events: list[tuple[str, str]], event: tuple[str, str]) -> int:
    assert event in events, f"{event} missing from {events}"
    return events.index(event)


def test_a_job_folder_and_its_files_are_synced_before_the_writer_returns(
    tmp_path: Path, syscalls: list[tuple[str, str]]
) -> None:
    results = tmp_path / "results"
    results.mkdir()
    out = job_result_dir(results, 7)
    frame, mask = _frame()
    files = write_frame_files(out, 0, frame, mask, sync_dir=False)
    write_result_json(out, {"job_id": 7}, [{"frame_index": 0}])
    ev = syscalls
    # The new job folder's name is made durable in results/ before anything goes in it.
    assert _index(ev, ("fsync", str(results))) < min(
        i for i, e in enumerate(ev) if e[0] == "replace"
    )
    last_replace = 0
    for final in (files.mask, files.overlay, out / "result.json"):
        tmp = final.with_name(f".{final.name}.tmp")
        assert _index(ev, ("fsync", str(tmp))) < _index(ev, ("replace", str(final)))
        last_replace = max(last_replace, _index(ev, ("replace", str(final))))
    # One folder sync after the last rename makes all three renames durable.
    assert [e for e in ev[last_replace:] if e[0] == "fsync"] == [("fsync", str(out))]
    assert [e for e in ev if e == ("fsync", str(out))] == [("fsync", str(out))]
    assert sorted(p.name for p in out.iterdir()) == [
        "frame_000_mask.png",
        "frame_000_overlay.png",
        "result.json",
    ]


def test_frame_files_alone_are_durable_by_default(
    tmp_path: Path, syscalls: list[tuple[str, str]]
) -> None:
    out = tmp_path / "job-000001"
    frame, mask = _frame()
    files = write_frame_files(out, 0, frame, mask)  # no result.json follows
    assert syscalls[-1] == ("fsync", str(out))
    assert syscalls.index(("replace", str(files.overlay))) < len(syscalls) - 1
    syscalls.clear()
    sync_job_dir(out)
    assert syscalls == [("fsync", str(out))]


def test_make_folder_syncs_the_parent_of_every_folder_it_creates(
    tmp_path: Path, syscalls: list[tuple[str, str]]
) -> None:
    make_folder(tmp_path / "a" / "b")
    assert syscalls == [("fsync", str(tmp_path)), ("fsync", str(tmp_path / "a"))]
    syscalls.clear()
    make_folder(tmp_path / "a" / "b")  # exists: nothing to make durable again
    assert syscalls == []
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(FileExistsError):
        make_folder(tmp_path / "file")


def test_a_write_that_cannot_be_renamed_into_place_leaves_no_tmp(tmp_path: Path) -> None:
    (tmp_path / "result.json").mkdir()  # a folder where the file should go
    with pytest.raises(OSError):
        write_json(tmp_path / "result.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_a_write_that_fails_midway_leaves_no_tmp_and_the_old_file_intact(
    tmp_path: Path,
) -> None:
    """The file-size limit (RLIMIT_FSIZE) makes the disk "full" after 4 KiB, in a child
    process so the limit cannot touch the test run; writing a 200 KB overlay then fails
    in the middle of the PNG, and a 10 KB result.json in the middle of the JSON."""
    out = tmp_path / "job-000001"
    frame, mask = _frame()
    write_frame_files(out, 0, frame, mask)
    before = (out / "frame_000_overlay.png").read_bytes()
    mask_before = (out / "frame_000_mask.png").read_bytes()
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        import numpy as np
        from pathlib import Path
        from appliance.results.writers import write_frame_files, write_result_json
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
        frame = np.random.default_rng(1).integers(0, 256, size=(400, 500), dtype=np.uint8)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
        out = Path({str(out)!r})
        for write in (
            lambda: write_frame_files(out, 0, frame, frame > 128),
            lambda: write_result_json(out, {{"notes": ["x" * 100] * 100}}, []),
        ):
            try:
                write()
            except OSError as exc:
                print("failed:", exc.errno)
            else:
                sys.exit("the write did not fail")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split("\n") == ["failed: 27", "failed: 27", ""]  # EFBIG, midway
    assert sorted(p.name for p in out.iterdir()) == [
        "frame_000_mask.png",
        "frame_000_overlay.png",
    ]  # no .tmp, and no result.json
    assert (out / "frame_000_overlay.png").read_bytes() == before
    assert (out / "frame_000_mask.png").read_bytes() == mask_before


def test_an_error_raised_by_the_content_writer_removes_the_tmp(tmp_path: Path) -> None:
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")

    def half(fh: Any) -> None:
        fh.write(b"new, half")
        raise KeyboardInterrupt  # even an interrupt leaves no temporary file

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, half)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]
    assert target.read_bytes() == b"old"
