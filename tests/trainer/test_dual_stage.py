"""The dual-stage ensemble classifier: profiles, backbones, its record in a bundle, training.

The shape / gradient / ONNX / safetensors contracts run over the family in
`tests/exporters/families.py`; here: the profiles' published widths, the classifier's
protocol and input checks, the architecture round trip through a real exported bundle run
by the node's ONNX Runtime backend, the stage-two freeze, and an interrupted run resuming to
the same weights. Tiny widths, 32 x 32 inputs: seconds each.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from appliance.bundle import load_bundle
from appliance.config import RuntimeConfig
from appliance.runtime import create_backend
from tests.exporters.families import TINY_DUAL_STAGE
from tests.trainer.test_train import write_tiny_busi
from trainer import dual_stage_train, profiles
from trainer.data import ArraySet, load_datasets
from trainer.dual_stage_train import STAGE_ONE, STAGE_TWO, train_dual_stage
from trainer.loops import Logger
from trainer.models import BACKBONES, DualStageClassifier, FameNodeNet, MAUNet
from trainer.models.backbones import NASNetA, PreActResNet
from trainer.profiles import EDGE, PAPER, DualStageProfile, NASNetSpec, ResNetV2Spec
from trainer.resume import StageCheckpoint
from trainer.run_config import TrainConfig
from trainer.seed import seed_everything
from trainer.train import parse_args
from trainer.weights import architecture, architecture_of, build_net, load_bundle_net

SIZE = 32


def test_the_paper_profile_has_the_published_widths() -> None:
    assert PAPER.resnet.depths == (3, 4, 6, 3) and PAPER.resnet.features == 2048
    n = PAPER.nasnet
    assert (n.stem_filters, n.cells, n.filters, n.features) == (96, 6, 168, 4032)
    assert n.skip_reduction and PAPER.head_width == 1024 and PAPER.dropout == 0.3
    assert PAPER.maunet.features == 256
    for p in (EDGE, PAPER):
        assert DualStageProfile.from_dict(p.to_dict()) == p
    assert profiles.profile("edge") is EDGE
    with pytest.raises(ValueError, match="unknown classifier profile 'huge'"):
        profiles.profile("huge")
    with pytest.raises(ValueError, match="multiple of 24"):
        NASNetSpec(penultimate_filters=100)
    with pytest.raises(ValueError, match="equal length"):
        ResNetV2Spec(depths=(1, 2), widths=(4,))


def test_paper_resnet_is_resnet50v2_sized() -> None:
    # Keras' ResNet50V2 without its top: 23.56 M parameters (BatchNorm's 4 per channel);
    # GroupNorm has 2 per channel, and the conv3 biases are kept, so within 1 %.
    params = sum(p.numel() for p in PreActResNet(PAPER.resnet, in_channels=3).parameters())
    assert abs(params - 23.56e6) / 23.56e6 < 0.01, params


def test_nasnet_with_skip_reduction_runs_and_counts_its_features() -> None:
    spec = NASNetSpec(stem_filters=4, cells=2, penultimate_filters=48, filter_multiplier=1)
    net = NASNetA(spec, in_channels=2).eval()
    # Cells: stem reductions 0, 1; normals 2, 3; reduction 4; normal 5 reads the input of
    # cell 3 (tensor 3), not that of the reduction (tensor 4).
    assert net.sources[5] == 3 and NASNetA(replace(spec, skip_reduction=False)).sources[5] == 4
    with torch.no_grad():
        assert tuple(net(torch.rand(2, 2, SIZE, SIZE)).shape) == (2, spec.features)


def test_the_classifier_protocol_and_its_input_checks() -> None:
    torch.manual_seed(0)
    model = DualStageClassifier(TINY_DUAL_STAGE).eval()
    x = torch.rand(3, 2, SIZE, SIZE)
    with torch.no_grad():
        features = model.features(x)
        assert features.shape == (3, sum(model.feature_dims))
        torch.testing.assert_close(model.classify_features(features), model(x))
        assert [tuple(z.shape) for z in model.stage_one_logits(x)] == [(3, 3)] * len(BACKBONES)
    with pytest.raises(ValueError, match=r"expects a \(N, 2, S, S\)"):
        model(torch.rand(1, 1, SIZE, SIZE))
    with pytest.raises(ValueError, match="distinct names"):
        DualStageClassifier(TINY_DUAL_STAGE, backbones=("nasnet", "nasnet"))
    with pytest.raises(ValueError, match="distinct names"):
        DualStageClassifier(TINY_DUAL_STAGE, backbones=("vgg16",))


def test_the_architecture_record_rebuilds_it_and_the_resnet_record_is_unchanged() -> None:
    net = FameNodeNet(MAUNet(base_width=4), DualStageClassifier(TINY_DUAL_STAGE, ("nasnet",)))
    arch = architecture_of(net)
    assert arch["classifier"]["kind"] == "dual-stage"
    assert arch["classifier"]["backbones"] == ["nasnet"]
    rebuilt = build_net(arch)
    assert isinstance(rebuilt.classifier, DualStageClassifier)
    assert rebuilt.classifier.profile == TINY_DUAL_STAGE
    assert architecture_of(rebuilt) == arch
    # The shipped bundle's kind keeps exactly the keys it had.
    assert architecture(16, (32, 64), 0.3)["classifier"] == {
        "kind": "preact-resnet",
        "in_channels": 2,
        "widths": [32, 64],
        "dropout": 0.3,
    }


def _arrays(n: int, seed: int) -> ArraySet:
    rng = np.random.default_rng(seed)
    images = rng.random((n, SIZE, SIZE), dtype=np.float32)
    labels = np.arange(n, dtype=np.int64) % 3
    images[labels == 2, 8:20, 8:20] += 1.0  # something to tell a class by
    masks = np.zeros((n, SIZE, SIZE), np.uint8)
    return ArraySet(images, masks, labels, tuple(f"img{i}" for i in range(n)))


def test_a_dual_stage_bundle_runs_in_the_node_and_loads_back(tmp_path: Path) -> None:
    from exporters.fame_bundle import BundleIdentity, export_fame_bundle

    torch.manual_seed(0)
    net = FameNodeNet(MAUNet(base_width=4), DualStageClassifier(TINY_DUAL_STAGE)).eval()
    train, val = _arrays(48, 0), _arrays(12, 1)
    out = export_fame_bundle(
        net,
        tmp_path / "bundle",
        identity=BundleIdentity(
            name="tiny-dual",
            version="0.0.1",
            preprocessing={"size": SIZE},
            mask_threshold=0.5,
            min_lesion_area_px=4,
        ),
        train=train,
        val=val,
        work_dir=tmp_path / "work",
        training={"data": "random test arrays"},
        evaluation={},
    )
    bundle = load_bundle(out)
    assert bundle.manifest.training["model"]["classifier"]["kind"] == "dual-stage"
    assert bundle.manifest.training["calibration"]["temperature"] > 0
    backend = create_backend(bundle, RuntimeConfig(backend="onnxruntime-cpu"))
    batch = np.ascontiguousarray(val.images[:4, None])
    outputs = backend.infer(batch)
    back = load_bundle_net(bundle)
    with torch.no_grad():
        lesion, class_prob = back(torch.from_numpy(batch))
        eager_lesion, eager_prob = net(torch.from_numpy(batch))
    torch.testing.assert_close(class_prob, eager_prob, rtol=0, atol=0)
    torch.testing.assert_close(lesion, eager_lesion, rtol=0, atol=0)
    np.testing.assert_allclose(outputs.lesion_prob, lesion.numpy()[:, 0], atol=1e-4)
    # The graph divides by the fitted temperature: same ranking, near the eager softmax.
    assert (outputs.class_prob.argmax(1) == class_prob.numpy().argmax(1)).all()
    assert outputs.ood_score is not None and outputs.ood_score.shape == (4,)


def _cfg(tmp_path: Path, work: str, manifest: Path) -> TrainConfig:
    return TrainConfig(
        manifest=manifest,
        out=tmp_path / f"bundle-{work}",
        work_dir=tmp_path / work,
        cache_dir=tmp_path / "cache",
        size=SIZE,
        base_width=4,
        batch_size=4,
        epochs_cls=2,
        epochs_meta=2,
        classifier="dual-stage",
        profile="tiny",
    )


@pytest.fixture()
def tiny_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(profiles.PROFILES, "tiny", TINY_DUAL_STAGE)


def _train(cfg: TrainConfig, log: Logger) -> DualStageClassifier:
    gen = seed_everything(cfg.seed, threads=1)
    data = load_datasets(cfg.manifests, cfg.preprocess_params(), cfg.cache_dir)
    torch.manual_seed(5)
    segmenter = MAUNet(base_width=4)
    model, summary = train_dual_stage(cfg, segmenter, data["train"], data["val"], gen, log, 1e12)
    assert summary["epochs_run"] == cfg.epochs_cls + cfg.epochs_meta
    return model


def test_stage_two_leaves_the_backbones_and_heads_as_stage_one_chose_them(
    tmp_path: Path, tiny_profile: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_tiny_busi(tmp_path / "busi", per_class=4)
    cfg = _cfg(tmp_path, "work", manifest)
    after_one: dict[str, torch.Tensor] = {}
    real_stage_two = dual_stage_train._stage_two

    def spy(cfg: TrainConfig, model: DualStageClassifier, *args: Any) -> dict[str, Any]:
        after_one.update({k: v.clone() for k, v in model.state_dict().items()})
        return real_stage_two(cfg, model, *args)

    monkeypatch.setattr(dual_stage_train, "_stage_two", spy)
    model = _train(cfg, Logger(tmp_path / "log.json", cfg))
    final = model.state_dict()
    frozen = [k for k in final if k.startswith(("backbones.", "heads."))]
    assert frozen and all(torch.equal(final[k], after_one[k]) for k in frozen)
    meta = [k for k in final if k.startswith("meta.")]
    assert any(not torch.equal(final[k], after_one[k]) for k in meta), "stage two trained nothing"
    assert all(p.requires_grad for p in model.parameters())  # whole again for fine-tuning


class _Interrupt(Exception):
    pass


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path: Path, tiny_profile: None) -> None:
    manifest = write_tiny_busi(tmp_path / "busi", per_class=4)
    straight = _cfg(tmp_path, "straight", manifest)
    expected = _train(straight, Logger(tmp_path / "straight.json", straight)).state_dict()

    for stage in (STAGE_ONE, STAGE_TWO):  # killed in either stage
        resumed = _cfg(tmp_path, f"resumed-{stage}", manifest)

        class Killed(Logger):
            kill_in = stage

            def epoch(self, at: str, record: dict[str, Any]) -> None:
                super().epoch(at, record)
                if at == self.kill_in and record["epoch"] == 2:
                    raise _Interrupt  # the epoch-2 checkpoint is not written yet

        with pytest.raises(_Interrupt):
            _train(resumed, Killed(tmp_path / f"{stage}.json", resumed))
        saved = StageCheckpoint(resumed.work_dir, stage).load()
        assert saved is not None and saved["epoch"] == 1
        log = Logger(tmp_path / f"{stage}.json", resumed)
        got = _train(resumed, log).state_dict()
        assert [r["epoch"] for r in log.data[STAGE_ONE]] == [1, 2]
        assert [r["epoch"] for r in log.data[STAGE_TWO]] == [1, 2]
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=f"{stage} {key}")


def test_the_cli_selects_the_dual_stage_classifier(tmp_path: Path) -> None:
    base = ["--manifest", "m.csv", "--out", str(tmp_path)]
    cfg, _ = parse_args([*base, "--classifier", "dual-stage", "--profile", "paper"])
    assert (cfg.classifier, cfg.profile, cfg.backbones) == ("dual-stage", "paper", BACKBONES)
    cfg, _ = parse_args([*base, "--classifier", "dual-stage", "--backbones", "nasnet"])
    assert cfg.backbones == ("nasnet",)
    plain, _ = parse_args(base)
    # A preact-resnet run's resume fingerprint does not see the dual-stage settings.
    assert plain.fingerprint() == replace(plain, profile="paper").fingerprint()
    assert cfg.fingerprint() != replace(cfg, profile="paper").fingerprint()
