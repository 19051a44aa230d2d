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
from trainer.probe import SCALE_FLOOR, choose_probe, fit_probe, main, probe_logits
from trainer.weights import load_bundle_net


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


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the tiny bundle, the probe bundle made from it)"""
    root = tmp_path_factory.mktemp("probe")
    bundle = make_tiny_bundle(root)
    out = root / "probed"
    csv = root / "busi" / "manifest.csv"
    assert main(
        ["--bundle", str(bundle), "--manifest", str(csv), "--version", "0.0.2",
         "--out", str(out), "--cache-dir", str(root / "cache"), "--threads", "1"]
    ) == 0  # fmt: skip
    return bundle, out


def test_the_probe_bundle_keeps_the_weights_and_records_the_probe(
    probed: tuple[Path, Path],
) -> None:
    old_dir, new_dir = probed
    old, new = load_bundle(old_dir), load_bundle(new_dir)  # both verify
    arch = new.manifest.training["model"]
    assert arch["probe"]["kind"] == "layer-probe" and "probe" not in old.manifest.training["model"]
    assert new.manifest.training["probe"]["layers"][-1] == "classifier"
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
