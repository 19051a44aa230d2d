"""`trainer.probe`: a layer probe fitted to a bundle's features, exported as a new bundle
whose every backend classifies with it, the network's weights unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from appliance.bundle import load_bundle
from tests.trainer.tinybundle import make_tiny_bundle
from trainer.graph import load_bundle_graph
from trainer.models import FameNodeNet, LayerProbe, LesionClassifier, MAUNet
from trainer.models.probe import LESION_EPS, LesionMeans
from trainer.ood import (
    LAYER_NAMES,
    FameNodeNetWithOOD,
    LayeredOODStats,
    OODStats,
    ood_features,
    probe_features,
)
from trainer.probe import (
    LESION_LAYER_NAMES,
    SCALE_FLOOR,
    choose_probe,
    fit_probe,
    main,
    probe_logits,
)
from trainer.weights import architecture_of, build_probe, load_bundle_net


def _blobs(n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Two layers of features whose class sits in a shifted, far-off-scale direction."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    a = rng.normal(size=(n, 4)) * 50.0 + 1000.0
    a[:, 0] = 1000.0 + rng.normal(size=n) * 5.0 + labels * 60.0  # far off zero, off scale
    b = rng.normal(size=(n, 3))
    b[:, 2] = 7.0  # constant: divided by the floor, not by zero
    return [a, b], labels.astype(np.int64)


def test_a_probe_learns_separable_features_and_stores_their_standardisation() -> None:
    layers, labels = _blobs(90, seed=0)
    probe = fit_probe(layers, labels, weight_decay=1e-3)
    assert probe.widths == (4, 3)
    x = np.concatenate(layers, axis=1)
    np.testing.assert_allclose(probe.offset.numpy(), x.mean(axis=0), rtol=1e-6)
    assert float(probe.scale[-1]) == pytest.approx(SCALE_FLOOR)  # the constant feature
    test_layers, test_labels = _blobs(60, seed=1)
    accuracy = (probe_logits(probe, test_layers).argmax(axis=1) == test_labels).mean()
    assert accuracy > 0.9
    # Deterministic: the same data give the same probe.
    again = fit_probe(layers, labels, weight_decay=1e-3)
    assert torch.equal(again.linear.weight, probe.linear.weight)
    with pytest.raises(ValueError, match="widths"):
        probe([torch.zeros(2, 4)])
    with pytest.raises(ValueError, match="every class"):
        fit_probe(layers, np.zeros(90, np.int64), weight_decay=1e-3)


def test_a_feature_that_barely_varies_on_train_is_not_blown_up_to_unit_spread() -> None:
    # A nearly dead channel: its statistic varies by 1e-6 on train, float32 rounding's size.
    # Divided by its own spread, an error that size in an engine would move the logits by
    # whole units; under the floor it moves them by 1e-4 of a unit or less.
    layers, labels = _blobs(90, seed=0)
    rng = np.random.default_rng(4)
    layers[1][:, 1] = 3e-5 + rng.normal(size=90) * 1e-6
    probe = fit_probe(layers, labels, weight_decay=1e-3)
    assert float(probe.scale[5]) == pytest.approx(SCALE_FLOOR)
    assert float(probe.scale[0]) == pytest.approx(layers[0][:, 0].std(), rel=1e-6)
    nudged = [layers[0].copy(), layers[1].copy()]
    nudged[1][:, 1] += 1e-6  # the rounding of one feature
    shift = np.abs(probe_logits(probe, nudged) - probe_logits(probe, layers)).max()
    assert shift < 1e-4
    free = fit_probe(layers, labels, weight_decay=1e-3, scale_floor=1e-9)
    assert float(free.scale[5]) < 1e-5  # without the floor the feature is divided by 1e-6
    with pytest.raises(ValueError, match="scale_floor"):
        fit_probe(layers, labels, weight_decay=1e-3, scale_floor=0.0)


def test_the_penalty_is_the_one_with_the_best_val_auc() -> None:
    train, val = _blobs(60, seed=2), _blobs(45, seed=3)
    probe, wd, sweep = choose_probe(train, val, (1e-4, 1e-1, 100.0))
    assert set(sweep) == {"0.0001", "0.1", "100.0"}
    best = max(sweep.values(), key=lambda s: s["macro_auc"])["macro_auc"]
    assert sweep[str(wd)]["macro_auc"] == best
    # A penalty this strong shrinks the weights towards zero: the sweep did compare fits.
    assert sweep["100.0"] != sweep["0.0001"] or wd == 100.0
    assert torch.equal(probe.linear.weight, fit_probe(*train, weight_decay=wd).linear.weight)


def test_lesion_means_average_each_level_inside_the_lesion_map() -> None:
    # A level whose channel is 3 inside the lesion and 10 outside: the lesion's mean is 3
    # (shrunk by the epsilon), at full resolution and on a level four times coarser.
    pool = LesionMeans(scales=(1, 4))
    prob = torch.zeros(2, 1, 16, 16)
    prob[0, :, 4:12, 4:12] = 1.0  # image 0: a lesion; image 1: none
    fine = torch.full((2, 1, 16, 16), 10.0)
    fine[:, :, 4:12, 4:12] = 3.0
    coarse = torch.full((2, 1, 4, 4), 10.0)
    coarse[:, :, 1:3, 1:3] = 3.0
    means = pool([fine, coarse], prob)
    assert [tuple(m.shape) for m in means] == [(2, 1), (2, 1)]
    for m, weight in zip(means, (64.0, 4.0), strict=True):  # the lesion's pixels per level
        assert m[0, 0] == pytest.approx(3.0 * weight / (weight + LESION_EPS), rel=1e-6)
        assert abs(float(m[1, 0])) < 1e-9  # an empty map: no lesion to average, ~0
    with pytest.raises(ValueError, match="2 levels, expected 3"):
        LesionMeans(scales=(1, 2, 4))([fine, coarse], prob)


def test_the_graph_appends_the_lesion_means_after_the_ood_layers() -> None:
    torch.manual_seed(0)
    net = FameNodeNet(MAUNet(base_width=4), LesionClassifier(widths=(4, 8))).eval()
    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32)).astype(np.float32)
    plain = probe_features(net, x, lesion_means=False)
    full = probe_features(net, x, lesion_means=True)
    assert len(plain) == len(LAYER_NAMES) and len(full) == len(LAYER_NAMES) + 5
    assert [f.shape[1] for f in full[len(LAYER_NAMES) :]] == [4, 8, 16, 32, 64]
    for a, b in zip(plain, full, strict=False):
        np.testing.assert_array_equal(a, b)  # the OOD layers are unchanged
    np.testing.assert_array_equal(ood_features(net, x)[0], plain[0])
    # A lesion-means probe makes the graph compute them; its OOD score is the same.
    stats = LayeredOODStats(
        layers=tuple(
            OODStats(means=np.eye(3, f.shape[1]), precision=np.eye(f.shape[1])) for f in plain
        ),
        scales=tuple(1.0 for _ in plain),
    )
    without = FameNodeNetWithOOD(net, stats)(torch.from_numpy(x[:, None]))
    net.probe = LayerProbe(tuple(f.shape[1] for f in full), lesion_means=True)
    with_means = FameNodeNetWithOOD(net, stats)(torch.from_numpy(x[:, None]))
    torch.testing.assert_close(with_means[2], without[2])
    torch.testing.assert_close(with_means[0], without[0])
    with pytest.raises(ValueError, match="lesion means"):
        LayerProbe((4, 8), lesion_means=True)


def test_the_weights_record_whether_the_probe_reads_lesion_means() -> None:
    widths = (2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1)
    old = {"kind": "layer-probe", "widths": list(widths[:6]), "num_classes": 3}
    assert build_probe(old).lesion_means is False  # bundles 0.2.4 and 0.2.5
    assert build_probe({**old, "widths": list(widths), "lesion_means": True}).lesion_means
    with pytest.raises(ValueError, match="true or false"):
        build_probe({**old, "lesion_means": "yes"})
    net = FameNodeNet(MAUNet(base_width=4), LesionClassifier(widths=(4, 8)))
    net.probe = LayerProbe(widths, lesion_means=True)
    assert architecture_of(net)["probe"]["lesion_means"] is True
    net.probe = LayerProbe(widths[:6])
    assert "lesion_means" not in architecture_of(net)["probe"]


@pytest.fixture(scope="module", params=[True, False], ids=["lesion-means", "whole-image"])
def probed(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> tuple[Path, Path]:
    """(the tiny bundle, the probe bundle made from it), with and without lesion means"""
    root = tmp_path_factory.mktemp("probe")
    bundle = make_tiny_bundle(root)
    out = root / "probed"
    csv = root / "busi" / "manifest.csv"
    flags = [] if request.param else ["--no-lesion-means"]
    assert main(
        ["--bundle", str(bundle), "--manifest", str(csv), "--version", "0.0.2",
         "--out", str(out), "--cache-dir", str(root / "cache"), "--threads", "1", *flags]
    ) == 0  # fmt: skip
    return bundle, out


def test_the_probe_bundle_keeps_the_weights_and_records_the_probe(
    probed: tuple[Path, Path],
) -> None:
    old_dir, new_dir = probed
    old, new = load_bundle(old_dir), load_bundle(new_dir)  # both verify
    arch = new.manifest.training["model"]
    assert arch["probe"]["kind"] == "layer-probe" and "probe" not in old.manifest.training["model"]
    lesion = bool(arch["probe"].get("lesion_means", False))
    names = [*LAYER_NAMES, *(LESION_LAYER_NAMES if lesion else ())]
    assert new.manifest.training["probe"]["layers"] == names
    assert len(arch["probe"]["widths"]) == len(names)
    assert "layer probe" in new.manifest.training["refitted"]["what"]
    assert "val" in new.manifest.evaluation
    old_net, new_net = load_bundle_net(old), load_bundle_net(new)
    assert new_net.probe is not None and old_net.probe is None
    old_state, new_state = old_net.state_dict(), new_net.state_dict()
    for key, tensor in old_state.items():
        assert torch.equal(new_state[key], tensor), key  # the network itself unchanged


def test_onnx_runtime_and_torch_classify_with_the_probe(probed: tuple[Path, Path]) -> None:
    old_dir, new_dir = probed
    new = load_bundle(new_dir)
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
    session = ort.InferenceSession(str(new_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        torch_out = load_bundle_graph(new)(x)
        old_out = load_bundle_graph(load_bundle(old_dir))(x)
    for a, b in zip(onnx_out, torch_out, strict=True):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-4)
    np.testing.assert_allclose(onnx_out[0], old_out[0].numpy(), atol=1e-6)  # the same mask
    assert not np.allclose(onnx_out[1], old_out[1].numpy(), atol=1e-3)  # other class probs
    manifest = json.loads((new_dir / "manifest.json").read_text())
    assert [o["name"] for o in manifest["outputs"]] == ["lesion_prob", "class_prob", "ood_score"]
