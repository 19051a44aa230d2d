"""`python -m bench.graphs`: verified bundles' graphs timed side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.graphs import main
from tests.trainer.test_train import write_tiny_busi
from tests.trainer.tinybundle import tiny_config
from trainer.train import run


@pytest.fixture(scope="module")
def two_bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("graphs")
    manifest = write_tiny_busi(root / "busi", per_class=4)
    old = run(tiny_config(manifest, root, bundle_version="0.0.1", out=root / "old"))
    wider = {"bundle_version": "0.0.2", "out": root / "new", "cls_widths": (8, 16)}
    new = run(tiny_config(manifest, root, **wider))
    return old, new


def test_two_bundles_are_timed_and_compared_to_the_first(
    two_bundles: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = two_bundles
    args = ["--bundle", str(old), "--bundle", str(new), "--repeats", "2", "--calls", "3"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    labels = list(report["images_per_s_median"])
    assert [label.rsplit("@", 1)[1] for label in labels] == ["0.0.1", "0.0.2"]
    assert all(v > 0 for v in report["images_per_s_median"].values())
    ratio = report["speed_against_first"][labels[1]]
    assert 0 < ratio["min"] <= ratio["median"] <= ratio["max"]
    assert report["settings"]["threads"] == 1 and report["machine"]["cores"]


def test_a_damaged_bundle_one_bundle_or_the_same_twice_is_refused(
    two_bundles: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = two_bundles
    assert main(["--bundle", str(old)]) == 2
    assert "at least two" in capsys.readouterr().err
    assert main(["--bundle", str(old), "--bundle", str(old)]) == 1
    assert "given twice" in capsys.readouterr().err
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for f in new.iterdir():
        (damaged / f.name).write_bytes(f.read_bytes())
    graph = damaged / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:-1] + b"\0")
    assert main(["--bundle", str(old), "--bundle", str(damaged)]) == 1
    assert "model.onnx" in capsys.readouterr().err  # refused before the graph is opened
