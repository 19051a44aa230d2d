"""`fame-node process --json` on every file of pydicom-data, as a user would run it."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from appliance.io.sample_data import pydicom_data_files, ultrasound_sample_files
from tests.e2e.nodeutil import node_env, run_cli

pytestmark = pytest.mark.skipif(
    not ultrasound_sample_files(), reason="pydicom-data is not installed (pip install '.[demo]')"
)


def test_every_pydicom_data_file(tmp_path: Path) -> None:
    files = pydicom_data_files()
    us = set(ultrasound_sample_files())
    proc = run_cli(node_env(tmp_path / "node"), "process", "--json", *map(str, files))
    assert proc.returncode == 3, proc.stderr[-2000:]  # not all done: other modalities
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["path"] for o in out] == [str(f) for f in files]
    for f, o in zip(files, out, strict=True):
        if f in us:
            assert o["status"] == "done", (f.name, o["reason"])
            assert o["frames"], f.name
            fr = o["frames"][0]
            assert set(fr["probabilities"]) == {"normal", "benign", "malignant"}
            assert abs(sum(fr["probabilities"].values()) - 1) < 1e-3
            assert fr["diagnosis"] in fr["probabilities"]
            assert "lesion_area_mm2" in fr and fr["lesion_area_px"] >= 0
            assert Path(o["result_dir"], "result.json").is_file()
        else:
            modality = pydicom.dcmread(f, stop_before_pixels=True, force=True).get("Modality")
            assert o["status"] == "rejected", (f.name, o)
            assert str(modality) in o["reason"], (f.name, o["reason"])
            assert "ultrasound" in o["reason"].lower()


def test_human_output_and_rerun_recognises_content(tmp_path: Path) -> None:
    sample = ultrasound_sample_files()[0]
    env = node_env(tmp_path / "node")
    first = run_cli(env, "process", str(sample))
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("done")
    first_job = json.loads(run_cli(env, "process", "--json", str(sample)).stdout)["job_id"]
    # The same file again is the same job; the same bytes under another name a duplicate.
    copy = tmp_path / "copy.dcm"
    copy.write_bytes(sample.read_bytes())
    again = run_cli(env, "process", "--json", str(sample), str(copy))
    same, dup = (json.loads(line) for line in again.stdout.splitlines())
    assert same["status"] == "done" and same["job_id"] == first_job
    assert dup["status"] == "done" and dup["duplicate_of"] == first_job
    assert dup["frames"] == same["frames"]
    status = run_cli(env, "status", "--json")
    data = json.loads(status.stdout)
    assert data["queue"]["done"] == 1 and data["queue"]["duplicate"] == 1
    assert data["provider"] == "CPUExecutionProvider"
    assert "each running its own frames" in data["sharing"]  # probed with the configured workers
