"""`trainer.ood_layers`: candidate OOD heads measured on a real (tiny) bundle's network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.bundle import load_bundle
from appliance.phantom import ood_check_specs
from exporters.fame_bundle import OOD_FLAGGED_SHARE
from tests.trainer.tinybundle import make_tiny_bundle
from trainer.ood import LAYER_NAMES, OOD_LAYERS
from trainer.ood_layers import CANDIDATES, main, selection_specs


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(bundle, its manifest.csv)"""
    root = tmp_path_factory.mktemp("ood-layers")
    return make_tiny_bundle(root), root / "busi" / "manifest.csv"


def test_every_candidate_and_layer_is_measured_on_the_bundles_own_data(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    bundle, csv = trained
    out = tmp_path / "layers.json"
    argv = ["--bundle", str(bundle), "--manifest", str(csv), "--out", str(out)]
    assert main([*argv, "--cache-dir", str(tmp_path / "cache")]) == 0
    result = json.loads(out.read_text())
    assert result["model"] == load_bundle(bundle).version_label
    assert result["n"]["check_phantoms"] == 24 and result["n"]["selection_phantoms"] == 60
    assert result["flagged_share_of_val"] == OOD_FLAGGED_SHARE
    assert list(result["heads"]) == list(CANDIDATES)
    assert list(result["single_layers"]) == list(LAYER_NAMES)
    # The four-level candidate is the head the export fits (since 0.2.8): the same threshold.
    exported = load_bundle(bundle).manifest.postprocessing["ood_threshold"]
    [same] = [h for h in result["heads"].values() if tuple(h["layers"]) == OOD_LAYERS]
    assert same["threshold"] == pytest.approx(exported, rel=1e-4)
    assert result["heads"]["all six (0.2.1 to 0.2.7)"]["threshold"] != same["threshold"]
    for head in [*result["heads"].values(), *result["single_layers"].values()]:
        check = head["check_phantoms"]
        assert check["n"] == 24 and 0 <= check["flagged"] <= 24
        # Flagged exactly when the score is over the threshold.
        assert (check["flagged"] == 24) == (check["least_margin"] > 1.0)
        assert 0.0 <= head["test_flagged"] <= 1.0


def test_the_phantoms_to_choose_on_are_not_the_ones_tested_on() -> None:
    chosen, tested = selection_specs(), ood_check_specs()
    assert len(chosen) == 60 and len(set(chosen)) == 60
    assert not {s.seed for s in chosen} & {s.seed for s in tested}
    assert {s.lesion for s in chosen} == {"ellipse", "lobulated", "none"}
    assert {s.posterior for s in chosen} == {"none", "shadow", "enhancement"}


def test_a_bundle_is_measured_only_on_the_data_it_was_trained_on(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    bundle, csv = trained
    changed = tmp_path / "busi" / "manifest.csv"  # the same name, other contents
    changed.parent.mkdir()
    changed.write_text(csv.read_text().replace("exclude", "train"))
    out = tmp_path / "x.json"
    assert main(["--bundle", str(bundle), "--manifest", str(changed), "--out", str(out)]) == 1
    assert not out.exists()
