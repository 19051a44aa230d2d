"""Choose the inference backend from what this machine really has.

Order (DESIGN.md): TensorRT engine -> ONNX Runtime CUDA -> ONNX Runtime CPU. This
version ships the ONNX Runtime backends; the TensorRT one comes with the engine exporter.
"""

from __future__ import annotations

import onnxruntime as ort

from appliance.bundle import Bundle
from appliance.config import RuntimeConfig
from appliance.errors import BackendError
from appliance.runtime.base import InferenceBackend
from appliance.runtime.onnx_backend import OnnxRuntimeBackend

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def create_backend(bundle: Bundle, config: RuntimeConfig) -> InferenceBackend:
    available = available_providers()
    if config.backend == "onnxruntime-cuda":
        if CUDA not in available:
            raise BackendError(
                "runtime.backend = 'onnxruntime-cuda' but this ONNX Runtime has no CUDA "
                f"provider (available: {available}). Install the 'gpu' extra "
                "(onnxruntime-gpu) or set runtime.backend = 'auto'."
            )
        providers = [CUDA, CPU]
    elif config.backend == "onnxruntime-cpu":
        providers = [CPU]
    else:
        providers = [CUDA, CPU] if CUDA in available else [CPU]
    return OnnxRuntimeBackend(
        bundle.model_path, providers=providers, intra_op_threads=config.intra_op_threads
    )
