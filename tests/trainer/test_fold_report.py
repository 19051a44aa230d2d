"""`trainer.fold_report`: each fold, the fold ensemble and a single model, per test site."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.trainer.foldbundle import export_tiny, tiny_fold_net, tiny_single_net
from tests.trainer.test_train import write_tiny_busi
from trainer.fold_report import main


def test_the_report_measures_every_fold_the_ensemble_and_the_single_model(
    tmp_path: Path,
) -> None:
    folds = export_tiny(tiny_fold_net(k=3), tmp_path / "folds")
    single = export_tiny(tiny_single_net(), tmp_path / "single", name="tiny-single")
    manifest = write_tiny_busi(tmp_path / "busi", per_class=4)
    out = tmp_path / "report.json"
    code = main(
        ["--ensemble", str(folds), "--bundle", str(single), "--manifest", str(manifest),
         "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    record = json.loads(out.read_text())
    names = list(record["contenders"])
    assert names == [
        "fold 1",
        "fold 2",
        "fold 3",
        "fold ensemble (mean map)",
        "single model (tiny-single@0.0.1)",
    ]
    n_test = sum(1 for line in manifest.read_text().splitlines()[1:] if ",test" in line)
    for figures in record["contenders"].values():
        busi = figures["sites"]["busi"]
        assert busi["n"] == n_test and 0.0 <= busi["dice"] <= 1.0
    # The folds start from different seeds: they disagree, so the uncertainty is not 0.
    assert record["uncertainty"]["busi"]["median"] > 0.0


def test_a_single_model_bundle_is_not_a_fold_ensemble(tmp_path: Path) -> None:
    single = export_tiny(tiny_single_net(), tmp_path / "single", name="tiny-single")
    with pytest.raises(SystemExit, match="not a fold ensemble"):
        main(["--ensemble", str(single), "--bundle", str(single), "--manifest", "x.csv",
              "--out", str(tmp_path / "r.json")])  # fmt: skip


def test_single_model_bundles_are_averaged_as_a_seed_ensemble(tmp_path: Path) -> None:
    seeds = [
        export_tiny(tiny_single_net(seed=s), tmp_path / f"seed{s}", name=f"tiny-seed{s}")
        for s in (1, 2)
    ]
    manifest = write_tiny_busi(tmp_path / "busi", per_class=4)
    out = tmp_path / "report.json"
    code = main(
        ["--members", *map(str, seeds), "--bundle", str(seeds[0]), "--manifest", str(manifest),
         "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    record = json.loads(out.read_text())
    assert record["ensemble_of"] == "seed"
    names = list(record["contenders"])
    assert names[:2] == ["tiny-seed1@0.0.1", "tiny-seed2@0.0.1"]
    assert names[2] == "seed ensemble (mean map)"
    for figures in record["contenders"].values():
        assert 0.0 <= figures["val_dice"] <= 1.0  # what the threshold was chosen on
    # The first member and the compared single model are one network: the same figures.
    assert record["contenders"][names[0]] == record["contenders"][names[-1]]
    assert record["uncertainty"]["busi"]["median"] > 0.0  # two seeds disagree
    with pytest.raises(SystemExit, match="at least 2"):
        main(["--members", str(seeds[0]), "--bundle", str(seeds[0]), "--manifest", str(manifest),
              "--out", str(tmp_path / "r.json")])  # fmt: skip
    folds = export_tiny(tiny_fold_net(k=2), tmp_path / "folds")
    with pytest.raises(SystemExit, match="not one MAU-Net"):
        main(["--members", str(seeds[0]), str(folds), "--bundle", str(seeds[0]),
              "--manifest", str(manifest), "--out", str(tmp_path / "r.json")])  # fmt: skip
