"""docs/PERFORMANCE.md's GPU section: absent results say so; present ones are tabulated
and checked against the figure, taking the best backend of the full model at batch 8."""

from __future__ import annotations

from typing import Any

from bench.report import gpu_section


def _entry(ms: float, speedup: float | None, tflops: float) -> dict[str, Any]:
    e: dict[str, Any] = {"ms_per_image": ms, "achieved_tflops": tflops}
    if speedup is not None:
        e["speedup_vs_torch_eager_fp32"] = {"median": speedup, "min": speedup, "max": speedup}
        e["fraction_of_fp16_peak"] = tflops / 989.0
    return e


def _gpu_run(compiled_speedup: float) -> dict[str, Any]:
    rows = {
        "torch_eager_fp32": _entry(1.2, None, 1.7),
        "torch_eager_fp16": _entry(0.9, 1.3, 2.3),
        "torch_compiled_fp16": _entry(round(1.2 / compiled_speedup, 2), compiled_speedup, 6.0),
    }
    return {
        "machine": {
            "gpu": "NVIDIA H200",
            "cpu": "x86",
            "cpus_usable": 16,
            "torch": "2.11.0",
            "onnxruntime": "1.30.0",
            "tensorrt": None,
        },
        "settings": {"repeats": 5},
        "weights": "trained checkpoint",
        "inputs": "phantoms",
        "families": {"full": {"gpu_batch8": rows, "cpu_batch8": {}}},
    }


def test_no_gpu_results_say_not_measured() -> None:
    for d in (None, {"families": {"full": {"cpu_batch8": {}}}}):
        text = "\n".join(gpu_section(d))
        assert "**Not measured.**" in text and "bench/device.sh" in text


def test_gpu_results_are_tabulated_and_judged_by_the_best_backend() -> None:
    text = "\n".join(gpu_section(_gpu_run(3.4)))
    assert "on NVIDIA H200" in text and "TensorRT not installed" in text
    assert "| full | 8 | torch_compiled_fp16 | 0.35 | **3.40x**" in text
    assert "torch_compiled_fp16, 3.40x median: met." in text
    slow = "\n".join(gpu_section(_gpu_run(2.5)))
    assert "torch_compiled_fp16, 2.50x median: not met." in slow
