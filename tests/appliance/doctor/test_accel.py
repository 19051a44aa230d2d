"""The doctor's accelerator checks: on this machine for real (its ONNX Runtime, a backend
named in the config that cannot run here), and the verdicts for what a GPU host may have
(the judging is a pure function of what was found)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import onnxruntime as ort
import pytest

from appliance.config import load_config
from appliance.doctor.accel import (
    CPU,
    CUDA,
    Accelerators,
    check_backend,
    find_accelerators,
    judge_accelerators,
)
from appliance.models.registry import ModelRegistry

HAS_CUDA_EP = CUDA in ort.get_available_providers()

GPU_HOST = Accelerators(
    gpus=("NVIDIA H200, 570.86.15, 143771 MiB",),
    gpu_problem=None,
    ort_version="1.22.0",
    providers=("TensorrtExecutionProvider", CUDA, CPU),
    ort_dists=("onnxruntime-gpu",),
    cuda_session=f"{CUDA},{CPU}",
    cuda_error=None,
    tensorrt="10.9.0",
    tensorrt_error=None,
)


def test_this_machine_is_reported_as_it_is(tmp_path: Path) -> None:
    config = load_config(env={"FAME_NODE_PATHS__ROOT": str(tmp_path)})
    with ModelRegistry(config) as registry:
        bundle = registry.load(registry.active().path)
    found = find_accelerators(bundle.model_bytes)
    assert found.providers == tuple(ort.get_available_providers())
    findings = list(judge_accelerators(found))
    assert any(f.check == "onnxruntime" and ort.__version__ in f.detail for f in findings)
    if not found.gpus and not found.gpu_problem:
        assert findings[0].detail.startswith("no NVIDIA GPU")
        assert not [f for f in findings if f.level != "ok"], findings
    if HAS_CUDA_EP:  # a session was really created with the CUDA provider
        assert found.cuda_session is not None or found.cuda_error is not None


def test_a_working_gpu_host_is_green() -> None:
    findings = list(judge_accelerators(GPU_HOST))
    assert {f.level for f in findings} == {"ok"}, findings
    assert any("a session really runs on CUDA" in f.detail for f in findings)
    assert any("TensorRT 10.9.0 can build engines" in f.detail for f in findings)


@pytest.mark.parametrize(
    ("found", "detail", "fix"),
    [
        (
            replace(GPU_HOST, providers=(CPU,), ort_dists=("onnxruntime",), cuda_session=None),
            "ONNX Runtime is the CPU build",
            "gpu extra",
        ),
        (
            replace(GPU_HOST, cuda_session=CPU),
            "lists the CUDA provider but cannot use it: the session fell back to "
            "CPUExecutionProvider",
            "cuDNN",
        ),
        (
            replace(GPU_HOST, ort_dists=("onnxruntime", "onnxruntime-gpu")),
            "onnxruntime and onnxruntime-gpu are both installed",
            "pip uninstall -y onnxruntime onnxruntime-gpu",
        ),
        (replace(GPU_HOST, tensorrt=None), "TensorRT is not installed", "gpu extra"),
        (
            replace(GPU_HOST, tensorrt_error="CUDA initialization failure with error: 35"),
            "cannot build on this GPU",
            "driver's CUDA version",
        ),
        (
            replace(GPU_HOST, gpus=(), gpu_problem="nvidia-smi fails: NVIDIA-SMI has failed"),
            "nvidia-smi fails",
            "NVIDIA driver",
        ),
    ],
)
def test_what_keeps_a_gpu_idle_is_named(found: Accelerators, detail: str, fix: str) -> None:
    warns = [f for f in judge_accelerators(found) if f.level == "warn"]
    assert any(detail in f.detail and fix in f.fix for f in warns), warns


@pytest.mark.skipif(HAS_CUDA_EP, reason="this machine has ONNX Runtime CUDA: it would run")
def test_a_configured_backend_that_cannot_run_blocks(tmp_path: Path) -> None:
    config = load_config(
        env={
            "FAME_NODE_PATHS__ROOT": str(tmp_path),
            "FAME_NODE_RUNTIME__BACKEND": "onnxruntime-cuda",
        }
    )
    (f,) = check_backend(config)
    assert f.level == "fail"
    assert "runtime.backend = 'onnxruntime-cuda' cannot run here" in f.detail
    assert "runtime.backend = 'auto'" in f.fix
