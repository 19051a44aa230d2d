"""TensorRT and ONNX Runtime CUDA backends: run wherever those packages and a GPU are.

Marked ``gpu``; each test skips with the reason when TensorRT, onnxruntime-gpu or a CUDA
device is missing (as on the CPU-only reference machines).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance.bundle import Bundle
from appliance.config import RuntimeConfig
from appliance.runtime.factory import CUDA, available_providers, create_backend, select_backend
from exporters.tensorrt import tensorrt_version


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


needs_trt = pytest.mark.skipif(
    tensorrt_version() is None or not _cuda(),
    reason="needs TensorRT (pip install 'fame-node[gpu]') and torch with a CUDA GPU",
)
needs_ort_cuda = pytest.mark.skipif(
    CUDA not in available_providers(), reason="needs onnxruntime-gpu with the CUDA provider"
)

pytestmark = pytest.mark.gpu


def _frames(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, 1, 32, 32)).astype(np.float32)


def _reference(bundle: Bundle) -> object:
    return create_backend(bundle, RuntimeConfig(backend="onnxruntime-cpu"), workers=1)


@needs_ort_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnxruntime_cuda_really_runs_on_cuda(
    tiny_bundle_with_weights: Bundle, precision: str
) -> None:
    config = RuntimeConfig(backend="onnxruntime-cuda", precision=precision)
    backend = create_backend(tiny_bundle_with_weights, config, workers=1)
    assert backend.device == CUDA
    ref = _reference(tiny_bundle_with_weights)
    x = _frames(5)
    got, want = backend.infer(x), ref.infer(x)  # type: ignore[attr-defined]
    tol = 1e-4 if precision == "fp32" else 2e-2
    np.testing.assert_allclose(got.lesion_prob, want.lesion_prob, atol=tol)
    np.testing.assert_allclose(got.class_prob, want.class_prob, atol=tol)


@needs_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_engine_is_built_cached_and_matches(
    tiny_bundle_with_weights: Bundle, precision: str, tmp_path: Path
) -> None:
    config = RuntimeConfig(
        backend="tensorrt",
        precision=precision,
        engine_cache_dir=tmp_path,
        micro_batch_max=8,
    )
    backend = create_backend(tiny_bundle_with_weights, config, workers=1)
    assert backend.name == "tensorrt"
    plans = list(tmp_path.glob("*.plan"))
    assert len(plans) == 1 and f"_{precision}_b8" in plans[0].name
    assert (tmp_path / "timing.cache").is_file()
    ref = _reference(tiny_bundle_with_weights)
    tol = 1e-3 if precision == "fp32" else 2e-2
    for n in (1, 4, 8, 13):  # 13 > the profile's 8: run in chunks
        x = _frames(n)
        got, want = backend.infer(x), ref.infer(x)  # type: ignore[attr-defined]
        np.testing.assert_allclose(got.lesion_prob, want.lesion_prob, atol=tol)
        np.testing.assert_allclose(got.class_prob, want.class_prob, atol=tol)
    # A second start finds the cached engine instead of building.
    mtime = plans[0].stat().st_mtime_ns
    create_backend(tiny_bundle_with_weights, config, workers=1)
    assert plans[0].stat().st_mtime_ns == mtime


@needs_trt
def test_a_foreign_engine_is_rebuilt(tiny_bundle_with_weights: Bundle, tmp_path: Path) -> None:
    config = RuntimeConfig(backend="tensorrt", engine_cache_dir=tmp_path)
    create_backend(tiny_bundle_with_weights, config, workers=1)
    plan = next(tmp_path.glob("*.plan"))
    plan.write_bytes(b"an engine from another GPU / TensorRT" * 100)
    backend = create_backend(tiny_bundle_with_weights, config, workers=1)
    assert backend.name == "tensorrt"
    assert plan.stat().st_size > 4000


@needs_trt
def test_auto_prefers_tensorrt(tiny_bundle_with_weights: Bundle, tmp_path: Path) -> None:
    backend, skipped = select_backend(
        tiny_bundle_with_weights, RuntimeConfig(engine_cache_dir=tmp_path)
    )
    assert backend.name == "tensorrt" and skipped == ()
