"""The benchmarks' eager contenders are the graph the node runs, not another model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")


def test_the_eager_model_is_the_shipped_bundles_graph_with_its_outputs() -> None:
    import onnxruntime as ort
    import torch

    from appliance.bundle import load_bundle
    from bench.common import DEFAULT_BUNDLE, load_eager
    from bench.models import families

    bundle = load_bundle(DEFAULT_BUNDLE)
    model, weights = load_eager()
    assert bundle.version_label in weights
    full = families(model)["full"]
    assert full["outputs"] == tuple(o.name for o in bundle.manifest.outputs)
    size = bundle.manifest.preprocess_params().size
    x = np.random.default_rng(0).random((1, 1, size, size), dtype=np.float32)
    with torch.inference_mode():
        eager = [t.numpy() for t in full["module"](torch.from_numpy(x))]
    session = ort.InferenceSession(bundle.data(bundle.manifest.model_file))
    onnx = session.run(None, {session.get_inputs()[0].name: x})
    for a, b in zip(eager, onnx, strict=True):
        assert np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b))) < 1e-4


def test_without_the_bundle_it_says_the_weights_are_random(tmp_path: Path) -> None:
    from bench.common import DEFAULT_BUNDLE, load_eager

    broken = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, broken)
    (broken / "weights.safetensors").write_bytes(b"tampered")
    model, weights = load_eager(broken)
    assert weights.startswith("random weights") and "weights.safetensors" in weights
    assert not hasattr(model, "ood_head")
