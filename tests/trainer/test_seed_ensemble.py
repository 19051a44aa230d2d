"""`trainer.seed_ensemble`: single-model bundles of one recipe from several seeds exported as
one verified bundle whose segmenter averages their MAU-Nets; a teacher for distillation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from appliance.bundle import load_bundle
from tests.trainer.test_train import write_tiny_busi
from tests.trainer.tinybundle import tiny_config
from trainer.distill import segmenter_kind
from trainer.models import FoldEnsemble
from trainer.probe import main as probe_main
from trainer.seed_ensemble import main
from trainer.train import run
from trainer.weights import load_bundle_net


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path]:
    """(two tiny bundles of one recipe from seeds 1 and 2, their manifest.csv)"""
    root = tmp_path_factory.mktemp("seeds")
    csv = write_tiny_busi(root / "busi", per_class=4)
    bundles = [
        run(tiny_config(csv, root / f"s{s}", seed=s, bundle_version=f"0.0.{s}")) for s in (1, 2)
    ]
    return bundles, csv


def test_the_bundle_averages_the_seeds_maps_and_records_them(
    seeds: tuple[list[Path], Path], tmp_path: Path
) -> None:
    (base, member), csv = seeds
    out = tmp_path / "ensemble"
    code = main(
        ["--bundle", str(base), "--member", str(member), "--manifest", str(csv),
         "--version", "0.1.0", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    )  # fmt: skip
    assert code == 0
    bundle = load_bundle(out)  # verified: every file's checksum
    net = load_bundle_net(bundle)
    assert isinstance(net.segmenter, FoldEnsemble) and net.segmenter.k == 2
    a, b = (load_bundle_net(load_bundle(p)).segmenter.eval() for p in (base, member))
    x = torch.from_numpy(np.random.default_rng(0).random((2, 1, 32, 32), dtype=np.float32))
    with torch.no_grad():
        mean = (torch.sigmoid(a(x)) + torch.sigmoid(b(x))) / 2
        ours = torch.sigmoid(net.segmenter.eval()(x))
    torch.testing.assert_close(ours, mean, atol=1e-5, rtol=1e-5)
    # Its classifier is the base bundle's, unchanged.
    base_net = load_bundle_net(load_bundle(base))
    for k, v in base_net.classifier.state_dict().items():
        torch.testing.assert_close(net.classifier.state_dict()[k], v)
    m = bundle.manifest
    record = m.training["seed_ensemble"]
    assert [r["seed"] for r in record["members"]] == [1, 2]
    assert m.postprocessing["mask_threshold"] == record["mask_threshold"]  # chosen on val
    assert m.evaluation["val"]["dice"] == pytest.approx(record["val_dice_ensemble"], abs=1e-4)
    assert m.training["refitted"]["from"] == load_bundle(base).version_label
    # The seeds' disagreement is the graph's 4th output, with a threshold set on val.
    assert "uncertainty_threshold" in m.postprocessing
    assert "seg_uncertainty" in [o.name for o in m.outputs]
    # A distillation from it records a teacher of seeds, not of folds.
    assert segmenter_kind(bundle, net.segmenter) == "2-seed MAU-Net ensemble"


def test_a_probed_bundle_or_a_single_member_is_refused(
    seeds: tuple[list[Path], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (base, member), csv = seeds
    probed = tmp_path / "probed"
    common = ["--manifest", str(csv), "--cache-dir", str(tmp_path / "cache")]
    assert probe_main(["--bundle", str(base), *common, "--version", "0.0.9",
                       "--out", str(probed)]) == 0  # fmt: skip
    assert main(["--bundle", str(probed), "--member", str(member), *common,
                 "--version", "0.1.0", "--out", str(tmp_path / "a")]) == 1  # fmt: skip
    assert "layer probe" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    # A member that is not a verified bundle: refused before any data is read.
    assert main(["--bundle", str(base), "--member", str(tmp_path / "a"), *common,
                 "--version", "0.1.0", "--out", str(tmp_path / "b")]) == 1  # fmt: skip
    assert str(tmp_path / "a") in capsys.readouterr().err
