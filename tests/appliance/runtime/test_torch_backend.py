"""The torch backend rebuilt from a bundle's model.pt computes the bundle's ONNX model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from appliance.bundle import Bundle
from appliance.config import RuntimeConfig
from appliance.errors import BackendError
from appliance.runtime.factory import create_backend
from appliance.runtime.torch_backend import TorchBackend, load_torch_model, padded_batch
from appliance.runtime.variants import torch_weights


def _frames(n: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, 1, size, size)).astype(np.float32)


def test_cpu_fp32_matches_onnxruntime(tiny_bundle_with_weights: Bundle) -> None:
    weights = torch_weights(tiny_bundle_with_weights)
    assert weights is not None
    backend = TorchBackend(weights, device="cpu", precision="fp32", compile=False, max_batch=4)
    reference = create_backend(
        tiny_bundle_with_weights, RuntimeConfig(backend="onnxruntime-cpu"), workers=1
    )
    x = _frames(6)  # more than max_batch: run in chunks
    got, want = backend.infer(x), reference.infer(x)
    np.testing.assert_allclose(got.lesion_prob, want.lesion_prob, atol=1e-4)
    np.testing.assert_allclose(got.class_prob, want.class_prob, atol=1e-4)
    assert backend.device.startswith(f"torch {torch.__version__} FP32 eager on CPU")


def test_fp16_needs_cuda(tiny_bundle_with_weights: Bundle) -> None:
    weights = torch_weights(tiny_bundle_with_weights)
    assert weights is not None
    with pytest.raises(BackendError, match="CUDA"):
        TorchBackend(weights, device="cpu", precision="fp16")


def test_weights_file_is_checked(tmp_path: Path) -> None:
    bad = tmp_path / "model.pt"
    torch.save({"something": 1}, bad)
    with pytest.raises(BackendError, match="not a FAME Node torch weights file"):
        load_torch_model(bad.read_bytes())
    with pytest.raises(BackendError, match=r"cannot read torch weights model\.pt"):
        load_torch_model(b"garbage")


@pytest.mark.parametrize(("n", "padded"), [(1, 1), (2, 2), (3, 4), (5, 8), (8, 8), (7, 8)])
def test_batches_are_padded_to_few_shapes(n: int, padded: int) -> None:
    assert padded_batch(n, 8) == padded


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs torch with a CUDA GPU")
@pytest.mark.parametrize("compiled", [False, True])
def test_cuda_fp16_matches_onnxruntime_cpu(
    tiny_bundle_with_weights: Bundle, compiled: bool
) -> None:
    weights = torch_weights(tiny_bundle_with_weights)
    assert weights is not None
    backend = TorchBackend(weights, device="cuda", precision="fp16", compile=compiled)
    reference = create_backend(
        tiny_bundle_with_weights, RuntimeConfig(backend="onnxruntime-cpu"), workers=1
    )
    for n in (1, 3, 8, 11):
        x = _frames(n)
        got, want = backend.infer(x), reference.infer(x)
        assert got.lesion_prob.dtype == np.float32
        np.testing.assert_allclose(got.lesion_prob, want.lesion_prob, atol=2e-2)
        np.testing.assert_allclose(got.class_prob, want.class_prob, atol=2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs torch with a CUDA GPU")
def test_factory_picks_torch_cuda_when_only_torch_has_cuda(
    tiny_bundle_with_weights: Bundle,
) -> None:
    from appliance.runtime.factory import CUDA, available_providers, select_backend
    from exporters.tensorrt import tensorrt_version

    if tensorrt_version() is not None or CUDA in available_providers():
        pytest.skip("TensorRT or ONNX Runtime CUDA is installed: they come before torch-cuda")
    backend, skipped = select_backend(tiny_bundle_with_weights, RuntimeConfig())
    assert [s.backend for s in skipped] == ["tensorrt", "onnxruntime-cuda"]
    assert backend.name == "torch"
    assert "FP16" in backend.device
