"""The benchmarks run end to end (briefly) and write a PERFORMANCE.md. Marked slow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_benchmarks_run_briefly_and_write_the_report(tmp_path: Path) -> None:
    from bench.__main__ import main

    doc = tmp_path / "PERFORMANCE.md"
    assert main(["--quick", "--results", str(tmp_path), "--doc", str(doc)]) == 0
    models = json.loads((tmp_path / "models.json").read_text())
    assert set(models["families"]) == {"segmentation", "classification", "full"}
    for fam in models["families"].values():
        assert fam["cpu_batch1"]["ort_cpu_fp32"]["ms_per_image"] > 0
        assert max(fam["onnx_parity_max_abs_diff"].values()) < 1e-4
    node = json.loads((tmp_path / "node.json").read_text())
    assert node["runs"]["node"][0]["done"] == node["runs"]["node"][0]["images"]
    text = doc.read_text()
    assert "torch eager vs ONNX Runtime" in text and "naive torch loop" in text
