"""Choose the inference backend from what this machine really has.

Order (DESIGN.md, "Runtime"), each tried only if the previous one does not really run:

1. **tensorrt**: TensorRT and a CUDA GPU; the engine for this GPU / TensorRT / precision is
   taken from the bundle's ``engines/`` (verified with the bundle) or the engine cache (only
   with the record the node wrote when it built it), or built there from the ONNX
   (`exporters.engines`; an engine that no longer deserializes is rebuilt);
2. **onnxruntime-cuda**: ONNX Runtime with the CUDA provider, *checked to be the provider the
   session really uses* (ONNX Runtime silently falls back to the CPU);
3. **torch-cuda**: torch with CUDA, the graph of ``model.onnx`` rebuilt from the bundle's
   ``weights.safetensors`` and ``heads.safetensors`` (FP16, compiled);
4. **onnxruntime-cpu**: always there.

A backend is taken only once it has loaded *and* run a first (warm-up) batch of zeros with
outputs of the right shapes and finite values: ``torch.compile`` compiles then, not on the
first job (`TorchBackend.warm_up`, which falls back to eager if compiling fails), and a
backend that loads but cannot run is found before any job depends on it. With
``runtime.backend = "auto"`` the first that passes wins; every one that fails, *whatever*
it raises, is logged with its reason and kept on the backend (`skipped`) for ``fame-node
status``, and the next one is tried. Naming one backend makes it mandatory: if it cannot
run, `BackendError` says why. The loaders are registered in `LOADERS`, tried in `ORDER`.

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

import numpy as np
import onnxruntime as ort

from appliance.bundle import Bundle
from appliance.config import RuntimeConfig
from appliance.cpus import usable_cpus
from appliance.errors import BackendError, BundleError
from appliance.runtime.base import InferenceBackend
from appliance.runtime.batcher import MicroBatcher
from appliance.runtime.onnx_backend import OnnxRuntimeBackend
from appliance.runtime.variants import (
    FP16_FILE,
    TORCH_GRAPH_FILES,
    batch_dims,
    fp16_model,
    missing_torch_files,
)

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


Loader = Callable[[Bundle, RuntimeConfig], InferenceBackend]


def select_backend(
    bundle: Bundle, config: RuntimeConfig
) -> tuple[InferenceBackend, tuple[Skipped, ...]]:
    """The first backend of `ORDER` (or the configured one) that loads and runs here."""
    if config.backend != "auto":
        try:
            return _ready(config.backend, bundle, config), ()
        except Exception as exc:  # whatever a backend raises, it cannot run here
            raise BackendError(
                f"runtime.backend = {config.backend!r} cannot run here: {_reason(exc)}. Set "
                "runtime.backend = 'auto' to take the best backend this machine has."
            ) from exc
    skipped: list[Skipped] = []
    for name in ORDER:
        try:
            return _ready(name, bundle, config), tuple(skipped)
        except Exception as exc:  # a broken driver or compiler must not stop the node
            if not isinstance(exc, BackendError):
                log.warning("inference backend %s failed: %s", name, _reason(exc))
            skipped.append(Skipped(name, _reason(exc)))
    raise BackendError("no inference backend runs here: " + "; ".join(str(s) for s in skipped))


class _FirstBatchError(Exception):
    """The backend loaded but failed its warm-up batch."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, BackendError):
        return str(exc)
    if isinstance(exc, _FirstBatchError):
        return str(exc)
    return f"failed to load: {type(exc).__name__}: {str(exc).strip()[:500]}"


def _ready(name: str, bundle: Bundle, config: RuntimeConfig) -> InferenceBackend:
    """Load backend `name` and run its warm-up batch; raises whatever stops it."""
    backend = LOADERS[name](bundle, config)
    try:
        warm_up(backend, bundle)
    except Exception as exc:
        raise _FirstBatchError(
            f"failed its first batch: {type(exc).__name__}: {str(exc).strip()[:500]}"
        ) from exc
    return backend


def warm_up(backend: InferenceBackend, bundle: Bundle) -> None:
    """Run a batch of zeros (every batch shape, for a backend with ``warm_up``) and check
    what comes back: one lesion map of the input's size and one probability per class."""
    _, dims = batch_dims(bundle)
    warm = getattr(backend, "warm_up", None)
    if callable(warm):
        warm(dims)
    out = backend.infer(np.zeros((1, *dims), np.float32))
    want_lesion = (1, *dims[1:])
    want_class = (1, len(bundle.manifest.classes))
    lesion, cls = np.asarray(out.lesion_prob), np.asarray(out.class_prob)
    if lesion.shape != want_lesion or cls.shape != want_class:
        raise BackendError(
            f"the first batch gave lesion_prob {lesion.shape} and class_prob {cls.shape}; "
            f"expected {want_lesion} and {want_class} from the bundle's manifest"
        )
    if not (np.isfinite(lesion).all() and np.isfinite(cls).all()):
        raise BackendError("the first batch gave NaN or infinite outputs")


# --------------------------------------------------------------------------- loaders


def _label(bundle: Bundle, rel: str) -> str:
    return f"{rel} of {bundle.version_label}"


def _onnxruntime_cpu(bundle: Bundle, config: RuntimeConfig) -> InferenceBackend:
    return OnnxRuntimeBackend(
        bundle.model_bytes,
        label=_label(bundle, bundle.manifest.model_file),
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
    model, rel = bundle.model_bytes, bundle.manifest.model_file
    half = fp16_model(bundle) if config.precision == "fp16" else None
    if half is not None:
        model, rel = half, FP16_FILE
    backend = OnnxRuntimeBackend(
        model,
        label=_label(bundle, rel),
        providers=[CUDA, CPU],
        intra_op_threads=config.intra_op_threads,
    )
    if backend.device != CUDA:
        raise BackendError(
            f"ONNX Runtime could not start its CUDA provider (the session fell back to "
            f"{backend.device}); check the CUDA / cuDNN libraries onnxruntime-gpu needs"
        )
    return backend


def _torch_cuda(bundle: Bundle, config: RuntimeConfig) -> InferenceBackend:
    from appliance.runtime.torch_backend import TorchBackend, cuda_available

    missing = missing_torch_files(bundle)  # checked first: it costs no torch import
    if missing:
        raise BackendError(
            f"bundle {bundle.version_label} has no {' or '.join(missing)}: the torch backend "
            f"rebuilds the graph of model.onnx from {' and '.join(TORCH_GRAPH_FILES)}. Add the "
            "heads to a bundle that has the weights with `python -m trainer.refit_heads "
            "--bundle DIR --manifest CSV --version NEW --out NEW_DIR`; a bundle without "
            "weights must be exported again by the trainer"
        )
    if not cuda_available():
        raise BackendError("torch is not installed or has no CUDA device")
    try:
        return TorchBackend(
            bundle,
            device="cuda",
            precision=config.precision,
            compile=config.torch_compile,
            max_batch=max(config.batch_size, config.micro_batch_max),
        )
    except BundleError as exc:  # the files do not rebuild the graph: say which and why
        raise BackendError(f"the torch backend cannot rebuild the bundle's graph: {exc}") from exc


def _tensorrt(bundle: Bundle, config: RuntimeConfig) -> InferenceBackend:
    from appliance.runtime.engine_cache import EngineCache
    from appliance.runtime.tensorrt_backend import StaleEngineError, TensorRTBackend
    from exporters.engines import engine_for
    from exporters.tensorrt import EngineBuildError, machine_key

    try:
        key = machine_key(
            bundle.manifest.files[bundle.manifest.model_file],
            config.precision,
            max(config.batch_size, config.micro_batch_max),
        )
        cache = EngineCache(config.engine_dir())
        engine = engine_for(bundle, key, cache)
        try:
            return TensorRTBackend(
                engine.data, label=engine.name, precision=key.precision, gpu_name=key.gpu.name
            )
        except StaleEngineError as exc:
            if engine.origin == "built":
                raise
            log.warning("%s; rebuilding it from the ONNX", exc)
        engine = engine_for(bundle, key, cache, skip=frozenset({"bundle", "cache"}))
    except EngineBuildError as exc:
        raise BackendError(f"no engine for this GPU and it could not be built: {exc}") from exc
    return TensorRTBackend(
        engine.data, label=engine.name, precision=key.precision, gpu_name=key.gpu.name
    )


LOADERS: dict[str, Loader] = {
    "tensorrt": _tensorrt,
    "onnxruntime-cuda": _onnxruntime_cuda,
    "torch-cuda": _torch_cuda,
    "onnxruntime-cpu": _onnxruntime_cpu,
}
