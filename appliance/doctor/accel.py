"""Doctor checks of what inference runs on: the GPU, CUDA, TensorRT, ONNX Runtime's
providers, and the backend the node really gets compared with what the config asks for.

ONNX Runtime lists a provider it cannot start and then silently runs on the CPU, so a
provider counts as usable only once a session was really created with it and
``get_providers()`` names it first. The judging is a pure function (`judge_accelerators`)
of what was found, so each verdict is testable on a machine without a GPU; finding it
(`nvidia-smi`, ``/dev/nvidia*``, sessions, the TensorRT builder) is done here.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from appliance.config import NodeConfig
from appliance.doctor.findings import Finding
from appliance.errors import BackendError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
GPU_FIX = (
    "install the node's gpu extra (packaging/install.sh picks it when nvidia-smi sees a GPU; "
    "by hand: pip uninstall onnxruntime, then pip install 'fame-node[gpu]')"
)


@dataclass(frozen=True)
class Accelerators:
    """What this machine has, as found (`find_accelerators`)."""

    gpus: tuple[str, ...]  # one line per GPU: name, driver, memory
    gpu_problem: str | None  # device nodes but no working driver, say
    ort_version: str
    providers: tuple[str, ...]  # ort.get_available_providers()
    ort_dists: tuple[str, ...]  # installed distributions providing the onnxruntime module
    cuda_session: str | None  # providers of a session created with CUDA first; None: not tried
    cuda_error: str | None  # why that session could not be created
    tensorrt: str | None  # TensorRT version, None: not installed
    tensorrt_error: str | None  # the builder could not be created on this GPU


def find_accelerators(model: bytes | None) -> Accelerators:
    """Look at this machine: GPUs, ONNX Runtime, a CUDA session on `model`, TensorRT."""
    import onnxruntime as ort

    gpus, problem = _nvidia_gpus()
    providers = tuple(ort.get_available_providers())
    dists = tuple(
        d for d in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino") if _installed(d)
    )
    cuda_session = cuda_error = None
    if CUDA in providers and model is not None:
        try:
            opts = ort.SessionOptions()
            opts.log_severity_level = 3  # its fallback warning is what we report ourselves
            session = ort.InferenceSession(model, opts, providers=[CUDA, CPU])
            cuda_session = ",".join(session.get_providers())
        except Exception as exc:  # a broken CUDA install raises anything
            cuda_error = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
    trt_version = trt_error = None
    if importlib.util.find_spec("tensorrt") is not None:
        try:
            trt = importlib.import_module("tensorrt")  # untyped, GPU hosts only
            trt_version = str(trt.__version__)
            if gpus:
                builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
                if builder is None:
                    trt_error = "trt.Builder returned None (no usable CUDA device for TensorRT)"
        except Exception as exc:
            trt_version = trt_version or "?"
            trt_error = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
    return Accelerators(
        gpus=gpus,
        gpu_problem=problem,
        ort_version=str(ort.__version__),
        providers=providers,
        ort_dists=dists,
        cuda_session=cuda_session,
        cuda_error=cuda_error,
        tensorrt=trt_version,
        tensorrt_error=trt_error,
    )


def judge_accelerators(found: Accelerators) -> Iterator[Finding]:
    """The findings for what was found (pure: no I/O)."""
    if found.gpus:
        for line in found.gpus:
            yield Finding("gpu", "ok", f"NVIDIA GPU: {line}")
    elif found.gpu_problem:
        yield Finding(
            "gpu",
            "warn",
            f"{found.gpu_problem}: inference falls back to the CPU",
            "check the NVIDIA driver (`nvidia-smi` must list the GPU; reboot after a driver "
            "update), then run doctor again",
        )
    else:
        yield Finding(
            "gpu", "ok", "no NVIDIA GPU (no nvidia-smi, no /dev/nvidia0): inference on the CPU"
        )
    ort = f"ONNX Runtime {found.ort_version}, providers: {', '.join(found.providers)}"
    yield Finding("onnxruntime", "ok", ort)
    if len([d for d in found.ort_dists if d != "onnxruntime-openvino"]) > 1:
        yield Finding(
            "onnxruntime",
            "warn",
            f"{' and '.join(found.ort_dists)} are both installed: they overwrite each other's "
            "files, so which one runs depends on the order they were installed",
            "pip uninstall -y onnxruntime onnxruntime-gpu, then pip install onnxruntime-gpu "
            "(GPU) or onnxruntime (CPU) alone",
        )
    if CUDA in found.providers:
        if found.cuda_session is not None and found.cuda_session.split(",")[0] == CUDA:
            yield Finding(
                "onnxruntime", "ok", f"a session really runs on CUDA ({found.cuda_session})"
            )
        elif found.cuda_session is not None or found.cuda_error is not None:
            got = found.cuda_error or f"the session fell back to {found.cuda_session}"
            yield Finding(
                "onnxruntime",
                "warn",
                f"ONNX Runtime lists the CUDA provider but cannot use it: {got}",
                "install the CUDA and cuDNN libraries this onnxruntime-gpu was built for "
                "(see its release notes; `ldconfig -p | grep -E 'cudnn|cublas'`)",
            )
    elif found.gpus:
        yield Finding(
            "onnxruntime",
            "warn",
            "this machine has a GPU but its ONNX Runtime is the CPU build (no CUDA provider)",
            GPU_FIX,
        )
    if found.tensorrt is None:
        if found.gpus:
            yield Finding(
                "tensorrt",
                "warn",
                "TensorRT is not installed: the fastest backend is unavailable on this GPU",
                GPU_FIX,
            )
    elif found.tensorrt_error:
        yield Finding(
            "tensorrt",
            "warn",
            f"TensorRT {found.tensorrt} is installed but cannot build on this GPU: "
            f"{found.tensorrt_error}",
            "install the TensorRT wheels matching the driver's CUDA version "
            "(`nvidia-smi` shows it)",
        )
    else:
        where = "can build engines on this GPU" if found.gpus else "installed (no GPU to use it)"
        yield Finding("tensorrt", "ok", f"TensorRT {found.tensorrt} {where}")


def check_accelerators(config: NodeConfig) -> Iterator[Finding]:
    from appliance.models.registry import ModelRegistry

    with ModelRegistry(config) as registry:
        bundle = registry.load(registry.active().path)
    yield from judge_accelerators(find_accelerators(bundle.model_bytes))


def check_backend(config: NodeConfig) -> Iterator[Finding]:
    """The backend the node really gets (a warm-up batch run), against the config."""
    from appliance.models.registry import ModelRegistry
    from appliance.runtime import create_backend

    with ModelRegistry(config) as registry:
        bundle = registry.load(registry.active().path)
    try:
        backend = create_backend(bundle, config.runtime, workers=config.processing.worker_count())
    except BackendError as exc:
        yield Finding(
            "backend",
            "fail",
            str(exc),
            "set runtime.backend = 'auto', or make the named backend work (the gpu, "
            "onnxruntime and tensorrt findings above say what is missing)",
        )
        return
    asked = config.runtime.backend
    yield Finding(
        "backend",
        "ok",
        f"{backend.name} on {backend.device} (ran a warm-up batch); runtime.backend = {asked!r}",
    )
    skipped = tuple(getattr(backend, "skipped", ()))
    for s in skipped:
        yield Finding("backend", "ok", f"not used: {s}")
    gpus, _ = _nvidia_gpus()
    if asked == "auto" and gpus and backend.device == CPU:
        yield Finding(
            "backend",
            "warn",
            "this machine has a GPU but the node would run on the CPU: "
            + "; ".join(str(s) for s in skipped),
            GPU_FIX,
        )


def _nvidia_gpus() -> tuple[tuple[str, ...], str | None]:
    """The GPUs `nvidia-smi` lists, or why none (None: no sign of an NVIDIA GPU at all)."""
    nodes = sorted(str(p) for p in Path("/dev").glob("nvidia[0-9]*"))
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return (), (f"{', '.join(nodes)} present but no nvidia-smi" if nodes else None)
    query = "--query-gpu=name,driver_version,memory.total"
    try:
        done = subprocess.run(
            [smi, query, "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return (), f"nvidia-smi did not answer ({exc})"
    if done.returncode != 0:
        why = (done.stdout + done.stderr).strip().splitlines()[:1] or [f"exit {done.returncode}"]
        return (), f"nvidia-smi fails: {why[0][:200]}"
    lines = tuple(line.strip() for line in done.stdout.splitlines() if line.strip())
    return lines, (None if lines else "nvidia-smi lists no GPU")


def _installed(dist: str) -> bool:
    try:
        metadata.version(dist)
    except metadata.PackageNotFoundError:
        return False
    return True
