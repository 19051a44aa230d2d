"""TensorRT backend: a deserialized engine, CUDA buffers, ``execute_async_v3``.

The engine comes as bytes that were verified before they got here: a shipped engine's
bytes checked against the bundle's manifest, or a cache entry's checked against the record
the node wrote when it built it (`appliance.runtime.engine_cache`; see
`appliance.runtime.factory`). Deserialising an engine runs native code, so it is never
given a file by path. Device
buffers are torch CUDA tensors: torch owns the allocations and the stream, and their
addresses are handed to TensorRT with ``set_tensor_address``. Input and output types are
read from the engine (an engine built from the FP16 ONNX still has FP32 I/O).

`load_engine` refuses an engine that this GPU / TensorRT cannot deserialize (built
elsewhere) with `StaleEngineError`, so that the factory can rebuild it. ``tensorrt`` and
``torch`` are imported lazily; constructing the backend without them raises `BackendError`.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

import numpy as np
from numpy.typing import NDArray

from appliance.errors import BackendError
from appliance.runtime.base import OOD_OUTPUT, UNCERTAINTY_OUTPUT, ModelOutputs

LESION_OUTPUT = "lesion_prob"
CLASS_OUTPUT = "class_prob"


class StaleEngineError(BackendError):
    """The engine file cannot be deserialized here (another GPU or TensorRT version)."""


def _imports() -> tuple[Any, Any]:
    try:
        trt = importlib.import_module("tensorrt")
        import torch
    except Exception as exc:  # ImportError, or OSError from a broken CUDA install
        raise BackendError(f"TensorRT backend needs tensorrt and torch with CUDA: {exc}") from exc
    if not torch.cuda.is_available():
        raise BackendError("TensorRT backend: torch sees no CUDA device")
    return trt, torch


def load_engine(data: bytes, label: str) -> Any:
    """Deserialize the (verified) engine bytes `data` for this GPU; `label` names it.

    Raises
    ------
    StaleEngineError
        TensorRT returns no engine (built for another GPU or TensorRT version, or damaged).
    """
    trt, _ = _imports()
    logger = trt.Logger(trt.Logger.ERROR)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise StaleEngineError(
            f"TensorRT {trt.__version__} cannot load engine {label}: it was built for "
            "another GPU or TensorRT version, or is damaged"
        )
    return engine


class TensorRTBackend:
    """One engine and one execution context; calls are serialized on one CUDA stream."""

    name = "tensorrt"

    def __init__(self, engine: bytes, *, label: str, precision: str, gpu_name: str) -> None:
        trt, torch = _imports()
        self._trt = trt
        self._torch = torch
        self.engine_label = label
        self._engine = load_engine(engine, label)
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise BackendError(f"TensorRT could not create an execution context for {label}")
        self._stream = torch.cuda.Stream()
        self._inputs: list[str] = []
        self._outputs: list[str] = []
        for i in range(self._engine.num_io_tensors):
            tensor = self._engine.get_tensor_name(i)
            if self._engine.get_tensor_mode(tensor) == trt.TensorIOMode.INPUT:
                self._inputs.append(tensor)
            else:
                self._outputs.append(tensor)
        if len(self._inputs) != 1 or {LESION_OUTPUT, CLASS_OUTPUT} - set(self._outputs):
            raise BackendError(
                f"engine {label}: expected one input and outputs {LESION_OUTPUT}, "
                f"{CLASS_OUTPUT}; found inputs {self._inputs}, outputs {self._outputs}"
            )
        # The optimisation profile's largest batch: bigger requests are run in chunks.
        _, _, max_shape = self._engine.get_tensor_profile_shape(self._inputs[0], 0)
        self.max_batch = int(max_shape[0])
        self._lock = threading.Lock()
        self._description = (
            f"TensorRT {trt.__version__} {precision.upper()} on {gpu_name} "
            f"(batch 1..{self.max_batch})"
        )

    @property
    def device(self) -> str:
        return self._description

    def _torch_dtype(self, tensor: str) -> Any:
        trt, torch = self._trt, self._torch
        mapping = {
            trt.DataType.FLOAT: torch.float32,
            trt.DataType.HALF: torch.float16,
            trt.DataType.INT32: torch.int32,
        }
        dtype = self._engine.get_tensor_dtype(tensor)
        if dtype not in mapping:
            raise BackendError(f"engine tensor {tensor} has unsupported type {dtype}")
        return mapping[dtype]

    def _run(self, chunk: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
        torch = self._torch
        name = self._inputs[0]
        with torch.cuda.stream(self._stream):
            x = torch.from_numpy(np.ascontiguousarray(chunk)).to(
                "cuda", dtype=self._torch_dtype(name), non_blocking=True
            )
            if not self._context.set_input_shape(name, tuple(x.shape)):
                raise BackendError(
                    f"batch shape {tuple(x.shape)} is outside the engine's optimisation profile"
                )
            self._context.set_tensor_address(name, x.data_ptr())
            outputs: dict[str, Any] = {}
            for out in self._outputs:
                shape = tuple(self._context.get_tensor_shape(out))
                buf = torch.empty(shape, dtype=self._torch_dtype(out), device="cuda")
                self._context.set_tensor_address(out, buf.data_ptr())
                outputs[out] = buf
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise BackendError(f"TensorRT execution failed ({self.engine_label})")
            host = {k: v.float().cpu() for k, v in outputs.items()}
        self._stream.synchronize()
        return {k: v.numpy() for k, v in host.items()}

    def infer(self, batch: NDArray[np.float32]) -> ModelOutputs:
        if batch.ndim != 4 or batch.shape[1] != 1:
            raise ValueError(f"expected a batch of shape (N, 1, S, S), got {batch.shape}")
        lesions: list[NDArray[np.float32]] = []
        classes: list[NDArray[np.float32]] = []
        oods: list[NDArray[np.float32]] = []
        uncertainties: list[NDArray[np.float32]] = []
        with self._lock:
            for start in range(0, batch.shape[0], self.max_batch):
                out = self._run(batch[start : start + self.max_batch])
                lesions.append(out[LESION_OUTPUT][:, 0])
                classes.append(out[CLASS_OUTPUT])
                if OOD_OUTPUT in out:
                    oods.append(out[OOD_OUTPUT])
                if UNCERTAINTY_OUTPUT in out:  # a fold-ensemble engine
                    uncertainties.append(out[UNCERTAINTY_OUTPUT])
        return ModelOutputs(
            lesion_prob=np.concatenate(lesions).astype(np.float32, copy=False),
            class_prob=np.concatenate(classes).astype(np.float32, copy=False),
            ood_score=np.concatenate(oods).astype(np.float32, copy=False) if oods else None,
            seg_uncertainty=(
                np.concatenate(uncertainties).astype(np.float32, copy=False)
                if uncertainties
                else None
            ),
        )
