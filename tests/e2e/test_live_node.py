"""A real `fame-node run` process, real files dropped into its inbox, real SIGTERM/SIGKILL."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.cpus import usable_cpus
from appliance.io.sample_data import pydicom_data_files, ultrasound_sample_files
from appliance.phantom import PhantomSpec, make_phantom
from appliance.phantom_dicom import write_phantom_png
from tests.e2e.badfiles import write_bad_files
from tests.e2e.nodeutil import (
    jobs,
    node_env,
    results,
    run_cli,
    start_node,
    stop_node,
    wait_for,
)

pytestmark = pytest.mark.skipif(
    not ultrasound_sample_files(), reason="pydicom-data is not installed (pip install '.[demo]')"
)

TERMINAL = {"done", "rejected", "failed", "duplicate"}


@pytest.fixture
def node_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="fame-node-e2e-"))
    (root / "inbox").mkdir()
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _by_name(rows: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    return {Path(str(r["path"])).name: r for r in rows}


def test_good_and_bad_files_in_a_live_node(node_root: Path) -> None:
    inbox = node_root / "inbox"
    # Root reads any file: to test "a file the node may not read", run the node without
    # the capabilities that override file permissions (CAP_DAC_OVERRIDE, _READ_SEARCH).
    drop_caps = os.geteuid() == 0 and shutil.which("setpriv") is not None
    samples = {p.name: p for p in ultrasound_sample_files()}
    # Three encodings (JPEG lossless, JPEG 2000, 16-bit palette) with distinct SOP UIDs.
    good = ["JPGLosslessP14SV1_1s_1f_8b.dcm", "US1_J2KR.dcm", "gdcm-US-ALOKA-16.dcm"]
    for name in good:
        shutil.copy(samples[name], inbox / name)
    for seed in (11, 12):
        write_phantom_png(inbox / f"phantom_{seed}.png", make_phantom(PhantomSpec(seed=seed)))
        good.append(f"phantom_{seed}.png")
    mr = next(p for p in pydicom_data_files() if p.name == "MR2_UNCR.dcm")
    bad = write_bad_files(inbox, samples["US1_UNCR.dcm"], mr)
    unreadable = inbox / "no_permission.png"
    write_phantom_png(unreadable, make_phantom(PhantomSpec(seed=13)))
    unreadable.chmod(0o000)
    before = {p.name: _sha(p) for p in inbox.iterdir()}

    db = node_root / "fame-node.sqlite3"
    proc = start_node(node_env(node_root), node_root / "node.log", drop_caps=drop_caps)
    try:
        # Files already there at start are picked up by the start scan; this one arrives
        # while the node runs and vanishes before the node can read it.
        wait_for(lambda: len(jobs(db)) >= 1, 120, "the node to start taking files")
        vanishing = inbox / "vanished.png"
        write_phantom_png(vanishing, make_phantom(PhantomSpec(seed=14)))
        vanishing.unlink()
        expected = len(good) + len(bad) + 2
        wait_for(
            lambda: sum(j["status"] in TERMINAL for j in jobs(db)) >= expected,
            240,
            f"{expected} files to reach a final state",
        )
        assert proc.poll() is None, "the node died on bad input"
        status = json.loads(run_cli(node_env(node_root), "status", "--json").stdout)
        assert status["service"]["alive"] and status["service"]["pid"] == proc.pid
        assert status["provider"] == "CPUExecutionProvider"
        assert status["provider_source"] == "the running service"
        # Two workers on the CPU: each runs its own frames, no micro-batcher.
        assert status["sharing"].startswith("2 worker(s), each running its own frames, ")
        threads = max(1, usable_cpus() // 2)
        assert status["sharing"].endswith(f"{threads} ONNX Runtime thread(s) each")
    finally:
        code = stop_node(proc)
    log = (node_root / "node.log").read_text(errors="replace")
    assert code == 0, log[-3000:]

    rows = _by_name(jobs(db))
    for name in good:
        assert rows[name]["status"] == "done", (name, rows[name]["reason"])
    done_ids = {rows[n]["id"] for n in good}
    assert {r["job_id"] for r in results(db)} == done_ids

    expected_codes = {
        "zero_bytes.dcm": ("empty_file", "empty"),
        "truncated.dcm": ("corrupt", ""),
        "random_bytes.dcm": ("unsupported_format", "not a DICOM"),
        "text.png": ("unsupported_format", "looks like text"),
        "no_pixels.dcm": ("no_pixel_data", "pixel"),
        "other_modality.dcm": ("not_ultrasound", "MR"),
        "huge_header.png": ("too_large", "100000"),
        "vanished.png": ("unreadable", "deleted"),
    }
    if drop_caps or os.geteuid() != 0:
        expected_codes["no_permission.png"] = ("unreadable", "permission")
    for name, (code_, words) in expected_codes.items():
        row = rows[name]
        assert row["status"] == "rejected", (name, row)
        assert row["error_code"] == code_, (name, row["error_code"], row["reason"])
        assert words.lower() in str(row["reason"]).lower(), (name, row["reason"])
        assert len(str(row["reason"])) > 30, (name, row["reason"])

    # Nothing in the inbox was changed or removed (the vanished file was removed by us).
    unreadable.chmod(0o644)
    after = {p.name: _sha(p) for p in inbox.iterdir()}
    assert after == before
    # Rejected files that still exist were copied to quarantine.
    quarantined = [r for r in rows.values() if r["quarantine_path"]]
    assert len(quarantined) >= len(bad)
    for r in quarantined:
        assert Path(str(r["quarantine_path"])).is_file()


def test_sigkill_mid_batch_then_restart_processes_every_file_exactly_once(
    node_root: Path,
) -> None:
    inbox = node_root / "inbox"
    n_files = 30
    for seed in range(n_files):
        spec = PhantomSpec(height=720, width=960, semi_axes_px=(120, 80), seed=100 + seed)
        write_phantom_png(inbox / f"case_{seed:02d}.png", make_phantom(spec))
    db = node_root / "fame-node.sqlite3"
    env = node_env(node_root, FAME_NODE_PROCESSING__WORKERS="1")
    proc = start_node(env, node_root / "node.log")
    try:
        wait_for(
            lambda: sum(j["status"] == "done" for j in jobs(db)) >= 3, 180, "3 files done", 0.02
        )
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    at_kill = jobs(db)
    done_at_kill = sum(j["status"] == "done" for j in at_kill)
    assert done_at_kill < n_files, "the batch finished before the kill; the test proves nothing"

    proc = start_node(env, node_root / "node.log")
    try:
        wait_for(
            lambda: sum(j["status"] == "done" for j in jobs(db)) >= n_files,
            300,
            "every file done after restart",
        )
    finally:
        assert stop_node(proc) == 0
    final = jobs(db)
    assert len(final) == n_files, [(j["path"], j["status"]) for j in final]
    assert sorted(Path(j["path"]).name for j in final) == [
        f"case_{i:02d}.png" for i in range(n_files)
    ]
    assert all(j["status"] == "done" for j in final)
    res = results(db)
    assert sorted(r["job_id"] for r in res) == sorted(j["id"] for j in final)  # one frame each
    result_dirs = list((node_root / "results").iterdir())
    assert len(result_dirs) == n_files
    # A job cut off by the kill was retried: it shows a second attempt.
    interrupted = [j for j in at_kill if j["status"] == "running"]
    for j in interrupted:
        assert next(f for f in final if f["id"] == j["id"])["attempts"] == 2
