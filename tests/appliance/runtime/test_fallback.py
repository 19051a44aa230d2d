"""A backend that fails to load or to run its first batch, whatever it raises, is skipped
with its reason and the next one is used; torch.compile compiles, or fails, at selection
(issue 8, item 11). Real backends where this machine has them: the ONNX Runtime CPU
backend over a model that loads but cannot run, the torch backend with a compiler that
fails; a small loader registered in the factory stands for a GPU backend that raises."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from appliance.bundle import Bundle, load_bundle
from appliance.config import RuntimeConfig
from appliance.errors import BackendError
from appliance.runtime import factory
from appliance.runtime.factory import ORDER, create_backend, select_backend
from appliance.runtime.onnx_backend import OnnxRuntimeBackend
from tests.appliance.models.bundles import write_test_bundle

SIZE = 32


@pytest.fixture(scope="module")
def fails_at_run(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """A bundle whose model loads in ONNX Runtime but fails on every batch (class_prob is
    a reshape of the 32x32 image to rows of 7 values: 1024 is not a multiple of 7)."""
    folder = tmp_path_factory.mktemp("failing")
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, SIZE, SIZE])
    lesion = helper.make_tensor_value_info(
        "lesion_prob", TensorProto.FLOAT, ["batch", 1, SIZE, SIZE]
    )
    cls = helper.make_tensor_value_info("class_prob", TensorProto.FLOAT, [None, None])
    shape = helper.make_tensor("rows_of_7", TensorProto.INT64, [2], [-1, 7])
    graph = helper.make_graph(
        [
            helper.make_node("Sigmoid", ["image"], ["lesion_prob"]),
            helper.make_node("Reshape", ["image", "rows_of_7"], ["class_prob"]),
        ],
        "fails_at_run",
        [image],
        [lesion, cls],
        [shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, folder / "model.onnx")
    return load_bundle(
        write_test_bundle(
            folder / "bundle", folder / "model.onnx", name="bad", version="1", size=SIZE
        )
    )


def test_a_backend_that_loads_but_cannot_run_is_not_selected(fails_at_run: Bundle) -> None:
    OnnxRuntimeBackend(fails_at_run.model_bytes, label="it", providers=["CPUExecutionProvider"])
    with pytest.raises(BackendError, match="onnxruntime-cpu: failed its first batch: ") as info:
        select_backend(fails_at_run, RuntimeConfig())
    assert "Reshape" in str(info.value) or "reshape" in str(info.value)
    with pytest.raises(BackendError, match="'onnxruntime-cpu' cannot run here: failed its first"):
        select_backend(fails_at_run, RuntimeConfig(backend="onnxruntime-cpu"))


class _Raises:
    """A GPU backend's loader that raises what drivers and compilers raise: not a
    BackendError."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def __call__(self, bundle: Bundle, config: RuntimeConfig) -> Any:
        raise self.exc


def test_any_exception_while_loading_skips_to_the_next_backend(
    tiny_bundle: Bundle, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(factory.LOADERS, "tensorrt", _Raises(RuntimeError("CUDA driver: 35")))
    monkeypatch.setitem(factory.LOADERS, "onnxruntime-cuda", _Raises(OSError("libcudnn.so.9")))
    caplog.set_level(logging.WARNING, logger="fame_node.runtime")
    backend = create_backend(tiny_bundle, RuntimeConfig(), workers=1)
    assert backend.device == "CPUExecutionProvider"
    skipped = {s.backend: s.reason for s in backend.skipped}  # type: ignore[attr-defined]
    assert skipped["tensorrt"] == "failed to load: RuntimeError: CUDA driver: 35"
    assert skipped["onnxruntime-cuda"] == "failed to load: OSError: libcudnn.so.9"
    assert "inference backend tensorrt failed" in caplog.text
    assert [s.backend for s in backend.skipped] == list(ORDER[:3])  # type: ignore[attr-defined]


def test_a_backend_whose_first_batch_has_wrong_shapes_is_skipped(
    tiny_bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appliance.runtime.base import ModelOutputs

    class WrongShapes:
        name, device = "wrong", "Nowhere"

        def infer(self, batch: np.ndarray) -> ModelOutputs:
            n = len(batch)
            return ModelOutputs(np.zeros((n, 8, 8), np.float32), np.zeros((n, 2), np.float32))

    monkeypatch.setitem(factory.LOADERS, "tensorrt", lambda b, c: WrongShapes())
    backend, skipped = select_backend(tiny_bundle, RuntimeConfig())
    assert backend.name == "onnxruntime"
    assert "lesion_prob (1, 8, 8) and class_prob (1, 2); expected (1, 32, 32) and (1, 3)" in (
        skipped[0].reason
    )


def _broken_compiler(gm: Any, example_inputs: Any) -> Any:
    raise RuntimeError("simulated: no C compiler for Inductor")


def test_torch_compile_failing_at_warm_up_runs_the_eager_model(
    tiny_bundle_with_weights: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appliance.runtime.torch_backend import TorchBackend

    def torch_on_cpu(bundle: Bundle, config: RuntimeConfig) -> TorchBackend:
        # the torch-cuda loader as it is on a GPU, on the CPU with a failing compiler
        return TorchBackend(
            bundle, device="cpu", precision="fp32", max_batch=2, compiler=_broken_compiler
        )

    monkeypatch.setitem(factory.LOADERS, "torch-cuda", torch_on_cpu)
    backend, skipped = select_backend(tiny_bundle_with_weights, RuntimeConfig())
    assert backend.name == "torch" and [s.backend for s in skipped] == list(ORDER[:2])
    assert not backend.compiled  # type: ignore[attr-defined]
    assert "eager (torch.compile failed: BackendCompilerFailed" in backend.device
    x = np.random.default_rng(0).standard_normal((3, 1, SIZE, SIZE)).astype(np.float32)
    reference = create_backend(tiny_bundle_with_weights, RuntimeConfig(backend="onnxruntime-cpu"))
    np.testing.assert_allclose(
        backend.infer(x).lesion_prob, reference.infer(x).lesion_prob, atol=1e-4
    )
