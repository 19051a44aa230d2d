"""Choose the inference backend from what this machine really has.

Order (DESIGN.md, "Runtime"), each tried only if the previous one does not really run:

1. **tensorrt**: TensorRT and a CUDA GPU; the engine for this GPU / TensorRT / precision is
   taken from the bundle's ``engines/`` or the engine cache, or built there from the ONNX
   (an engine that no longer deserializes, e.g. after a driver or TensorRT change, is rebuilt);
2. **onnxruntime-cuda**: ONNX Runtime with the CUDA provider, *checked to be the provider the
   session really uses* (ONNX Runtime silently falls back to the CPU);
3. **torch-cuda**: torch with CUDA and the bundle's ``model.pt`` (FP16, compiled);
4. **onnxruntime-cpu**: always there.

With ``runtime.backend = "auto"`` the first that loads wins and every skipped one is logged
with its reason and kept on the backend (`skipped`) for ``fame-node status``. Naming one
backend makes it mandatory: if it cannot run, `BackendError` says why.

How the workers share it (`create_backend`): on a GPU their concurrent calls are merged
into one batch by a `MicroBatcher` (a batch of 8 costs little more than a batch of 1);
on the CPU each worker runs its own frames with the CPUs shared out among the workers
(one thread each where there are as many workers as CPUs), which measured faster than
merging batches for a multi-threaded session on the small CPUs of edge nodes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import onnxruntime as ort

from appliance.bundle import Bundle
from appliance.config import RuntimeConfig
from appliance.cpus import usable_cpus
from appliance.errors import BackendError
from appliance.runtime.base import InferenceBackend
from appliance.runtime.batcher import MicroBatcher
from appliance.runtime.onnx_backend import OnnxRuntimeBackend
from appliance.runtime.variants import batch_dims, bundle_file, fp16_model, torch_weights

if TYPE_CHECKING:
    from exporters.tensorrt import EngineKey

log = logging.getLogger("fame_node.runtime")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
ORDER: tuple[str, ...] = ("tensorrt", "onnxruntime-cuda", "torch-cuda", "onnxruntime-cpu")


@dataclass(frozen=True)
class Skipped:
    """A backend that was not used, and why."""

    backend: str
    reason: str

    def __str__(self) -> str:
        return f"{self.backend}: {self.reason}"


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def create_backend(
    bundle: Bundle, config: RuntimeConfig, *, workers: int | None = None
) -> InferenceBackend:
    """The backend for `bundle` on this machine, shared by `workers` threads.

    `workers` is the number of threads that will call it (None: unknown). With
    ``runtime.intra_op_threads = 0`` ONNX Runtime gets ``usable CPUs // workers`` threads
    (at least 1; all of them when the CPU backend is micro-batched). A GPU backend shared
    by several workers is wrapped in a `MicroBatcher` unless ``runtime.micro_batch_max``
    is 1; the CPU backend only with ``runtime.micro_batch_on_cpu``. A lone caller loses
    nothing to the wrapper but one thread hand-off (and ``micro_batch_wait_ms`` at most).

    Raises
    ------
    BackendError
        the configured backend cannot run here (with ``auto``: not even the CPU one).
    """
    if config.intra_op_threads == 0 and workers and not config.micro_batch_on_cpu:
        threads = max(1, usable_cpus() // workers)
        config = config.model_copy(update={"intra_op_threads": threads})
    backend, skipped = select_backend(bundle, config)
    for s in skipped:
        log.info("inference backend %s skipped: %s", s.backend, s.reason)
    log.info("inference backend: %s on %s", backend.name, backend.device)
    on_cpu = backend.device == CPU
    shared = workers is None or workers > 1
    if config.micro_batch_max > 1 and shared and (config.micro_batch_on_cpu or not on_cpu):
        wrapped = MicroBatcher(
            backend, max_batch=config.micro_batch_max, wait_ms=config.micro_batch_wait_ms
        )
        wrapped.skipped = skipped  # type: ignore[attr-defined]
        return wrapped
    backend.skipped = skipped  # type: ignore[attr-defined]
    return backend


def describe_sharing(backend: InferenceBackend, workers: int) -> str:
    """How `workers` threads share `backend`, in words for `fame-node status` and the log."""
    if isinstance(backend, MicroBatcher):
        return (
            f"{workers} worker(s); frames merged into batches of up to {backend.max_batch} "
            "(micro-batching)"
        )
    threads = getattr(backend, "intra_op_threads", None)
    each = f", {threads} ONNX Runtime thread(s) each" if threads else ""
    return f"{workers} worker(s), each running its own frames{each}"


def select_backend(
    bundle: Bundle, config: RuntimeConfig
) -> tuple[InferenceBackend, tuple[Skipped, ...]]:
    """The first backend of `ORDER` (or the configured one) that really runs here."""
    loaders: dict[str, Callable[[Bundle, RuntimeConfig], InferenceBackend]] = {
        "tensorrt": _tensorrt,
        "onnxruntime-cuda": _onnxruntime_cuda,
        "torch-cuda": _torch_cuda,
        "onnxruntime-cpu": _onnxruntime_cpu,
    }
    if config.backend != "auto":
        try:
            return loaders[config.backend](bundle, config), ()
        except BackendError as exc:
            raise BackendError(
                f"runtime.backend = {config.backend!r} cannot run here: {exc}. Set "
                "runtime.backend = 'auto' to take the best backend this machine has."
            ) from exc
    skipped: list[Skipped] = []
    for name in ORDER:
        try:
            return loaders[name](bundle, config), tuple(skipped)
        except BackendError as exc:
            skipped.append(Skipped(name, str(exc)))
    raise BackendError("no inference backend runs here: " + "; ".join(str(s) for s in skipped))


# --------------------------------------------------------------------------- loaders


def _onnxruntime_cpu(bundle: Bundle, config: RuntimeConfig) -> InferenceBackend:
    return OnnxRuntimeBackend(
        bundle.model_path,
        providers=[CPU],
        intra_op_threads=config.intra_op_threads,
        spinning=config.intra_op_spinning,
    )


def _onnxruntime_cuda(bundle: Bundle, config: RuntimeConfig) -> InferenceBackend:
    available = available_providers()
    if CUDA not in available:
        raise BackendError(
            f"this ONNX Runtime has no CUDA provider (available: {available}); install the "
            "'gpu' extra (onnxruntime-gpu)"
        )
    model = bundle.model_path
    if config.precision == "fp16":
        model = fp16_model(bundle) or model
    backend = OnnxRuntimeBackend(
        model, providers=[CUDA, CPU], intra_op_threads=config.intra_op_threads
    )
    if backend.device != CUDA:
        raise BackendError(
            f"ONNX Runtime could not start its CUDA provider (the session fell back to "
            f"{backend.device}); check the CUDA / cuDNN libraries onnxruntime-gpu needs"
        )
    return backend


def _torch_cuda(bundle: Bundle, config: RuntimeConfig) -> InferenceBackend:
    from appliance.runtime.torch_backend import TorchBackend, cuda_available

    weights = torch_weights(bundle)  # checked first: it costs no torch import
    if weights is None:
        raise BackendError(
            "the bundle has no torch weights (model.pt); add them with `fame-node export onnx "
            "--bundle DIR --checkpoint CKPT`"
        )
    if not cuda_available():
        raise BackendError("torch is not installed or has no CUDA device")
    return TorchBackend(
        weights,
        device="cuda",
        precision=config.precision,
        compile=config.torch_compile,
        max_batch=max(config.batch_size, config.micro_batch_max),
    )


def _tensorrt(bundle: Bundle, config: RuntimeConfig) -> InferenceBackend:
    from appliance.runtime.tensorrt_backend import StaleEngineError, TensorRTBackend
    from exporters.tensorrt import (
        BuildSettings,
        EngineBuildError,
        build_engine,
        engine_filename,
        machine_key,
        onnx_for_precision,
    )

    try:
        key = machine_key(
            bundle.manifest.files[bundle.manifest.model_file],
            config.precision,
            max(config.batch_size, config.micro_batch_max),
        )
    except EngineBuildError as exc:
        raise BackendError(str(exc)) from exc
    name = engine_filename(key)
    cache = config.engine_dir()
    shipped = bundle_file(bundle, f"engines/{name}")
    candidates = [p for p in (shipped, cache / name) if p is not None and p.is_file()]
    for path in candidates:
        try:
            return TensorRTBackend(path, precision=key.precision, gpu_name=key.gpu.name)
        except StaleEngineError as exc:
            log.warning("%s; rebuilding it from the ONNX", exc)
    input_name, dims = batch_dims(bundle)
    try:
        source = onnx_for_precision(bundle.model_path, _fp16_source(bundle, key, cache), key)
        out = build_engine(
            source,
            cache / name,
            key,
            BuildSettings(input_name, dims, key.max_batch),
            timing_cache=cache / "timing.cache",
        )
    except (EngineBuildError, OSError) as exc:
        raise BackendError(f"no engine for this GPU and it could not be built: {exc}") from exc
    return TensorRTBackend(out, precision=key.precision, gpu_name=key.gpu.name)


def _fp16_source(bundle: Bundle, key: EngineKey, cache: Path) -> Path | None:
    """The bundle's FP16 ONNX, or one converted now into the cache (TensorRT 11 needs it)."""
    from exporters.fp16 import Fp16Error, export_fp16

    shipped = fp16_model(bundle)
    if shipped is not None or key.precision != "fp16" or not key.strongly_typed:
        return shipped
    out = cache / f"{key.model_sha256[:16]}.fp16.onnx"
    if not out.is_file():
        try:
            export_fp16(bundle.model_path, out)
        except Fp16Error as exc:
            raise BackendError(f"the FP16 ONNX TensorRT 11 needs cannot be made: {exc}") from exc
    return out
