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
from tests.trainer.tinybundle import make_tiny_bundle
from trainer.models import FameNodeNet, LesionClassifier, MAUNet
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
