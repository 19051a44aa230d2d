"""`fame-node demo` as `make demo` runs it (without BUSI, to keep the default run short)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.io.sample_data import ultrasound_sample_files
from tests.e2e.nodeutil import clean_env, node_env, run_cli


@pytest.mark.skipif(not ultrasound_sample_files(), reason="pydicom-data is not installed")
def test_demo_processes_good_files_and_rejects_bad_ones(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    env = node_env(tmp_path / "unused")
    proc = run_cli(env, "demo", "--dir", str(demo), "--busi", str(tmp_path / "no-busi"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "every good file was processed and every bad one rejected" in out
    assert "not found: the demo runs without the BUSI images" in out
    for name in ("empty.dcm", "random_bytes.dcm", "notes.png", "MR2_UNCR.dcm", "RG1_UNCR.dcm"):
        line = next(line for line in out.splitlines() if line.startswith(name))
        assert " rejected " in line, line
    assert "phantom_ellipse_shadow.dcm" in out and "mm2" in out
    # The obstetric frame: no confident breast diagnosis in the table, as in the GUI.
    line = next(line for line in out.splitlines() if line.startswith("US1_J2KR.dcm"))
    assert "Not assessed" in line and "out_of_distribution" in line, line
    assert not any(c in line.lower().split() for c in ("normal", "benign", "malignant")), line
    # The demo node is a real node: its store answers the ordinary commands.
    config = str(demo / "config.toml")
    res = run_cli(clean_env(), "--config", config, "results", "--json", "--limit", "500")
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) == len(ultrasound_sample_files()) + 2 + 4 + 4
    frames = [f for r in rows for f in r["frames"] if "out_of_distribution" in f["flags"]]
    assert frames and all(f["diagnosis"] for f in frames)  # the store keeps the model's answer
    # Running it again starts from a clean demo folder.
    again = run_cli(env, "demo", "--dir", str(demo), "--busi", str(tmp_path / "no-busi"))
    assert again.returncode == 0


def test_demo_refuses_to_wipe_a_folder_it_did_not_create(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    proc = run_cli(node_env(tmp_path / "n"), "demo", "--dir", str(precious))
    assert proc.returncode != 0
    assert "is not a demo folder" in proc.stderr + proc.stdout
    assert (precious / "keep.txt").read_text() == "mine"
