"""Contract of a bundle's torch weights: they rebuild the model the ONNX graph was exported
from, they are read only from a verified bundle, and nothing else is accepted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from appliance.bundle import load_bundle
from appliance.runtime.variants import HEADS_FILE
from tests.trainer.tinybundle import make_tiny_bundle
from trainer.graph import HeadsError, heads_bytes, heads_from_bytes, load_bundle_graph
from trainer.models import FameNodeNet, LesionClassifier, MAUNet
from trainer.ood import LAYER_NAMES, OOD_LAYERS, LayeredOODStats, OODStats
from trainer.weights import (
    WEIGHTS_FILE,
    WeightsError,
    architecture_of,
    build_net,
    load_bundle_net,
    net_from_bytes,
    weights_bytes,
)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("weights"))


def test_the_weights_rebuild_the_exported_model(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    assert (
        bundle.has(WEIGHTS_FILE) and bundle.data(WEIGHTS_FILE)[:8] != b"\x80\x04\x95"
    )  # no pickle
    net = load_bundle_net(bundle)
    x = np.random.default_rng(1).normal(size=(3, 1, 32, 32)).astype(np.float32)
    session = ort.InferenceSession(bundle.model_bytes, providers=["CPUExecutionProvider"])
    onnx_seg, onnx_cls = session.run(["lesion_prob", "class_prob"], {"image": x})
    with torch.no_grad():
        seg, cls = net(torch.from_numpy(x))
    assert float(np.abs(seg.numpy() - onnx_seg).max()) <= 1e-4
    # The graph divides the logits by the calibration temperature (trainer.calibration);
    # softmax(log p / T) is softmax(logits / T).
    t = bundle.manifest.training["calibration"]["temperature"]
    calibrated = torch.softmax(torch.log(cls) / t, dim=1).numpy()
    assert float(np.abs(calibrated - onnx_cls).max()) <= 1e-4
    # Loaded again from its own bytes, the same outputs exactly.
    again = net_from_bytes(weights_bytes(net))
    with torch.no_grad():
        torch.testing.assert_close(again(torch.from_numpy(x))[1], cls, rtol=0, atol=0)


def test_a_bundle_whose_weights_were_changed_is_not_loaded(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    data = bytearray((copy / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0x01
    (copy / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(Exception, match=r"sha256|checksum|does not match"):
        load_bundle_net(load_bundle(copy))


def test_architecture_disagreement_and_other_families_are_refused() -> None:
    net = FameNodeNet(MAUNet(base_width=4), LesionClassifier(in_channels=2, widths=(4, 8)))
    data = weights_bytes(net)
    other = {
        **architecture_of(net),
        "segmenter": {"kind": "mau-net", "in_channels": 1, "base_width": 8},
    }
    with pytest.raises(WeightsError, match="differs"):
        net_from_bytes(data, other)
    with pytest.raises(WeightsError, match="family"):
        build_net({**architecture_of(net), "family": "resnet50v2"})
    with pytest.raises(WeightsError, match=r"not a safetensors|corrupt"):
        net_from_bytes(b"\x80\x04\x95 pickle")
    wider = FameNodeNet(MAUNet(base_width=8), LesionClassifier(in_channels=2, widths=(4, 8)))
    data = weights_bytes(wider)
    # The header claims base width 4 while the tensors are of width 8: they do not fit.
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    header["__metadata__"]["architecture"] = json.dumps(architecture_of(net), sort_keys=True)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    forged = len(text).to_bytes(8, "little") + text + data[8 + header_len :]
    with pytest.raises(WeightsError, match="do not fit"):
        net_from_bytes(forged)


def test_a_bundle_without_weights_says_it_cannot_be_fine_tuned(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    # A bundle written before bundles carried torch weights: the same model, no weights file.
    from exporters.bundle import write_bundle

    m = load_bundle(tiny_bundle).manifest
    old = write_bundle(
        tmp_path / "old",
        tiny_bundle / m.model_file,
        name=m.name,
        version=m.version,
        task=m.task,
        classes=m.classes,
        inputs=m.inputs,
        outputs=m.outputs,
        preprocessing=m.preprocessing,
        postprocessing=m.postprocessing,
        training=m.training,
    )
    bundle = load_bundle(old)
    assert not bundle.has(WEIGHTS_FILE)
    with pytest.raises(WeightsError, match=r"cannot be fine-tuned|not fine-tuned"):
        load_bundle_net(bundle)


# --------------------------------------------------------------------------- heads


def _stats(rng: np.random.Generator, widths: tuple[int, ...]) -> list[OODStats]:
    out = []
    for d in widths:
        a = rng.normal(size=(d, d))
        out.append(OODStats(means=rng.normal(size=(3, d)), precision=a @ a.T + np.eye(d)))
    return out


def test_the_heads_round_trip_layered_and_single_and_hold_no_pickle() -> None:
    rng = np.random.default_rng(0)
    layered = LayeredOODStats(
        layers=tuple(_stats(rng, (2, 3, 4, 5, 6, 7))), scales=(0.5, 1.0, 1.5, 2.0, 2.5, 3.125)
    )
    data = heads_bytes(layered, 1.2345678901, weights_sha256="ab" * 32)
    assert data[:1] != b"\x80"  # safetensors, never a pickle
    got = heads_from_bytes(data)
    assert got.temperature == 1.2345678901 and got.weights_sha256 == "ab" * 32
    assert isinstance(got.stats, LayeredOODStats) and got.layers == LAYER_NAMES
    assert got.stats.scales == layered.scales
    for a, b in zip(got.stats.layers, layered.layers, strict=True):
        # float32: what the graph's buffers hold (MahalanobisHead), exactly
        np.testing.assert_array_equal(a.means, b.means.astype(np.float32))
        np.testing.assert_array_equal(a.precision, b.precision.astype(np.float32))
    # Since 0.2.8 the head scores the four encoder levels: their names travel with it.
    encoders = LayeredOODStats(
        layers=tuple(_stats(rng, (2, 3, 4, 5))), scales=(0.5, 1.0, 1.5, 2.0), names=OOD_LAYERS
    )
    again = heads_from_bytes(heads_bytes(encoders, 1.0, weights_sha256="ab" * 32))
    assert isinstance(again.stats, LayeredOODStats) and again.layers == OOD_LAYERS
    assert again.stats.indices == (0, 1, 2, 3) and again.stats.scales == encoders.scales
    single = _stats(rng, (5,))[0]
    back = heads_from_bytes(heads_bytes(single, 2.0, weights_sha256="cd" * 32))
    assert isinstance(back.stats, OODStats) and back.layers == ("classifier",)
    np.testing.assert_array_equal(back.stats.means, single.means.astype(np.float32))


def _with_layers(data: bytes, names: list[str]) -> bytes:
    """A heads file whose metadata names other layers than its tensors are stored for."""
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    header["__metadata__"]["layers"] = json.dumps(names)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + header_len :]


def test_heads_that_are_not_heads_are_refused() -> None:
    with pytest.raises(HeadsError, match="not a safetensors"):
        heads_from_bytes(b"\x80\x04")
    net = FameNodeNet(MAUNet(base_width=4), LesionClassifier(in_channels=2, widths=(4, 8)))
    with pytest.raises(HeadsError, match=r"format None.*fame-node-heads/1"):
        heads_from_bytes(weights_bytes(net))  # a weights file is not a heads file
    rng = np.random.default_rng(1)
    data = heads_bytes(_stats(rng, (4,))[0], 1.0, weights_sha256="00" * 32)
    with pytest.raises(HeadsError, match="incomplete or corrupt"):
        heads_from_bytes(_with_layers(data, ["encoder1"]))
    # A layered head over layers the graph does not compute, or out of its order: refused.
    two = LayeredOODStats(
        layers=tuple(_stats(rng, (2, 3))), scales=(1.0, 1.0), names=OOD_LAYERS[:2]
    )
    data = heads_bytes(two, 1.0, weights_sha256="00" * 32)
    forged = _with_layers(data, ["encoder2", "encoder1"])
    with pytest.raises(HeadsError, match=r"over the layers \['encoder2', 'encoder1'\]"):
        heads_from_bytes(forged)
    with pytest.raises(ValueError, match="temperature"):
        heads_bytes(_stats(rng, (4,))[0], 0.0, weights_sha256="00" * 32)


def test_a_trained_bundles_torch_graph_is_its_onnx_graph(tiny_bundle: Path) -> None:
    # The bundle trainer.train exports: the graph from weights + heads gives every output.
    bundle = load_bundle(tiny_bundle)
    assert bundle.has(HEADS_FILE)
    module = load_bundle_graph(bundle)
    names = [o.name for o in bundle.manifest.outputs]
    assert list(module.output_names) == names
    x = np.random.default_rng(2).normal(size=(3, 1, 32, 32)).astype(np.float32)
    session = ort.InferenceSession(bundle.model_bytes, providers=["CPUExecutionProvider"])
    want = session.run(names, {"image": x})
    with torch.no_grad():
        got = module(torch.from_numpy(x))
    for name, a, b in zip(names, got, want, strict=True):
        assert float(np.abs(a.numpy() - b).max()) <= 1e-4, name
