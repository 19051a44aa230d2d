"""`trainer.refit_heads`: a bundle's heads fitted again on its own data, weights unchanged,
and nothing fitted on data the bundle was not trained on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from appliance.bundle import load_bundle
from appliance.errors import BundleError
from tests.trainer.tinybundle import make_tiny_bundle
from trainer.refit_heads import RefitError, main, refit


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(bundle, its manifest.csv)"""
    root = tmp_path_factory.mktemp("refit")
    bundle = make_tiny_bundle(root)
    return bundle, root / "busi" / "manifest.csv"


def test_a_refit_reproduces_the_exports_heads_and_records_where_it_came_from(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    bundle, csv = trained
    assert main(
        ["--bundle", str(bundle), "--manifest", str(csv), "--version", "0.0.2",
         "--out", str(tmp_path / "refit"), "--cache-dir", str(tmp_path / "cache")]
    ) == 0  # fmt: skip
    old, new = load_bundle(bundle).manifest, load_bundle(tmp_path / "refit").manifest
    assert (new.name, new.version) == (old.name, "0.0.2")
    assert new.files["weights.safetensors"] == old.files["weights.safetensors"]
    # The same weights and data give the same heads: the refit is the export's own fit.
    assert new.postprocessing == old.postprocessing
    assert new.training["calibration"] == old.training["calibration"]
    assert new.training["refitted"]["from"] == f"{old.name}@{old.version}"
    assert new.training["manifests"] == old.training["manifests"]
    assert "encoder1" in new.training["ood"] and new.evaluation == old.evaluation


def test_other_data_a_changed_manifest_or_a_tampered_bundle_is_refused(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    bundle, csv = trained
    changed = tmp_path / "busi"
    shutil.copytree(csv.parent, changed)
    (changed / "manifest.csv").write_text(csv.read_text() + "\n", encoding="utf-8")
    with pytest.raises(RefitError, match="data changed"):
        refit(bundle, [changed / "manifest.csv"], "0.0.3", tmp_path / "a", tmp_path / "c")
    other = tmp_path / "busbra"
    other.mkdir()
    shutil.copy(csv, other / "manifest.csv")
    with pytest.raises(RefitError, match="exactly the manifests"):
        refit(bundle, [other / "manifest.csv"], "0.0.3", tmp_path / "b", tmp_path / "c")
    with pytest.raises(RefitError, match="new one"):
        refit(bundle, [csv], load_bundle(bundle).manifest.version, tmp_path / "d", tmp_path / "c")
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    weights = tampered / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        refit(tampered, [csv], "0.0.3", tmp_path / "e", tmp_path / "c")
    assert not any((tmp_path / d).exists() for d in "abde")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["version"] != "0.0.3"
