"""FoldEnsemble (`trainer.models.fold_ensemble`): the mean map, the fold disagreement on
constructed maps, and its bundle (4 outputs, the threshold, weights round trip)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from appliance.bundle import load_bundle
from tests.trainer.foldbundle import SIZE, export_tiny, tiny_fold_net, tiny_single_net
from trainer.models import FoldEnsemble, MAUNet
from trainer.models.fold_ensemble import disagreement
from trainer.weights import load_bundle_net


def _square(offset: int, s: int = 32, side: int = 10) -> torch.Tensor:
    m = torch.zeros(1, 1, s, s)
    m[..., 8 + offset : 8 + offset + side, 8 : 8 + side] = 0.95
    return m + 0.02


def test_agreeing_folds_give_zero_whether_on_a_lesion_or_on_none() -> None:
    same = torch.stack([_square(0)] * 3)
    assert float(disagreement(same)[0]) == pytest.approx(0.0, abs=1e-6)
    empty = torch.full((3, 2, 1, 32, 32), 0.01)
    np.testing.assert_allclose(disagreement(empty).numpy(), 0.0, atol=1e-6)


def test_disagreement_grows_as_one_fold_moves_away_and_stays_in_0_1() -> None:
    scores = [
        float(disagreement(torch.stack([_square(0), _square(0), _square(shift)]))[0])
        for shift in (0, 2, 4, 7, 10, 14)
    ]
    assert all(b > a for a, b in itertools.pairwise(scores)), scores
    assert scores[0] >= 0.0 and scores[-1] <= 1.0
    # Two folds, certain and opposite, on every pixel either calls lesion: the maximum.
    one, zero = torch.ones(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)
    assert float(disagreement(torch.stack([one, zero]))[0]) == pytest.approx(1.0, abs=1e-3)
    # More folds joining the majority dilute a lone dissenter.
    lone = [float(disagreement(torch.stack([_square(0)] * n + [_square(14)]))[0]) for n in (2, 4)]
    assert lone[1] < lone[0]


def test_forward_is_the_logit_of_the_mean_map_and_predict_returns_both() -> None:
    torch.manual_seed(0)
    ens = FoldEnsemble([MAUNet(base_width=4) for _ in range(3)]).eval()
    x = torch.rand(2, 1, SIZE, SIZE)
    with torch.no_grad():
        mean, u = ens.predict(x)
        manual = torch.stack([torch.sigmoid(m(x)) for m in ens.members]).mean(0)
        np.testing.assert_allclose(torch.sigmoid(ens(x)).numpy(), manual.numpy(), atol=1e-6)
    np.testing.assert_allclose(mean.numpy(), manual.numpy(), atol=1e-7)
    assert u.shape == (2,) and bool(((u > 0) & (u < 1)).all())


def test_members_of_other_architectures_and_a_single_member_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        FoldEnsemble([MAUNet(base_width=4)])
    with pytest.raises(ValueError, match="fold 1 is not of fold 0's architecture"):
        FoldEnsemble([MAUNet(base_width=4), MAUNet(base_width=8)])
    with pytest.raises(ValueError, match="K >= 2"):
        disagreement(torch.zeros(1, 1, 1, 4, 4))


@pytest.fixture(scope="module")
def fold_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny(tiny_fold_net(), tmp_path_factory.mktemp("folds"))


def test_the_bundle_has_the_fourth_output_its_threshold_and_its_provenance(
    fold_bundle: Path,
) -> None:
    manifest = load_bundle(fold_bundle).manifest
    names = [o.name for o in manifest.outputs]
    assert names == ["lesion_prob", "class_prob", "ood_score", "seg_uncertainty"]
    assert manifest.outputs[-1].shape == ["batch"]
    threshold = manifest.postprocessing["uncertainty_threshold"]
    assert 0.0 < threshold < 1.0
    assert "10% of the val split" in manifest.training["uncertainty"]
    model = manifest.training["model"]["segmenter"]
    assert model["kind"] == "mau-net-folds" and model["folds"] == 3


def test_weights_round_trip_through_the_bundle_into_the_same_outputs(fold_bundle: Path) -> None:
    bundle = load_bundle(fold_bundle)
    net = load_bundle_net(bundle)
    assert isinstance(net.segmenter, FoldEnsemble) and net.segmenter.k == 3
    original = tiny_fold_net()
    x = torch.rand(2, 1, SIZE, SIZE)
    with torch.no_grad():
        for a, b in zip(net(x), original(x), strict=True):
            assert torch.equal(a, b)
        assert torch.equal(net.segmenter.predict(x)[1], original.segmenter.predict(x)[1])


def test_a_single_mau_net_bundle_keeps_three_outputs_and_no_threshold(tmp_path: Path) -> None:
    manifest = load_bundle(export_tiny(tiny_single_net(), tmp_path, "tiny-one")).manifest
    assert [o.name for o in manifest.outputs] == ["lesion_prob", "class_prob", "ood_score"]
    assert "uncertainty_threshold" not in manifest.postprocessing
    assert "uncertainty" not in manifest.training
    assert manifest.training["model"]["segmenter"]["kind"] == "mau-net"
    assert "folds" not in json.dumps(manifest.training["model"])


def test_fold_training_resumes_each_fold_from_its_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.trainer.test_train import write_tiny_busi
    from trainer.data import load_datasets
    from trainer.fold_training import train_fold_ensemble
    from trainer.loops import Logger
    from trainer.run_config import TrainConfig

    manifest = write_tiny_busi(tmp_path / "busi", per_class=4)
    cfg = TrainConfig(
        manifest=manifest,
        out=tmp_path / "bundle",
        work_dir=tmp_path / "work",
        cache_dir=tmp_path / "cache",
        size=SIZE,
        base_width=4,
        batch_size=4,
        epochs_seg=1,
        folds=2,
    )
    data = load_datasets(cfg.manifests, cfg.preprocess_params(), cfg.cache_dir)
    first, summary = train_fold_ensemble(
        cfg, data["train"], data["val"], Logger(tmp_path / "a.json", cfg)
    )
    assert [f["fold"] for f in summary["per_fold"]] == [0, 1]
    assert sum(f["held_out_images"] for f in summary["per_fold"]) == len(data["train"])
    assert all(0.0 <= f["val_dice"] <= 1.0 for f in summary["per_fold"])
    assert 0.0 <= summary["ensemble_val_dice"] <= 1.0
    assert (cfg.work_dir / "fold0" / "stage1.resume.pt").is_file()
    capsys.readouterr()
    again, _ = train_fold_ensemble(
        cfg, data["train"], data["val"], Logger(tmp_path / "b.json", cfg)
    )
    printed = capsys.readouterr().out
    assert printed.count("resuming after epoch 1") == 2  # both folds, nothing retrained
    for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
