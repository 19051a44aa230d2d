"""The engine cache key: a pure function of GPU, compute capability, TensorRT, precision."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from exporters.tensorrt import (
    EngineBuildError,
    EngineKey,
    GpuInfo,
    engine_filename,
    machine_key,
    onnx_for_precision,
    parse_nvidia_smi,
    slug,
    tensorrt_version,
)

H100 = GpuInfo("NVIDIA H100 80GB HBM3", (9, 0))
SHA = "c9c35c50b88e0a46565585004a13dddd3e45090dff845e7710c382c82f64057c"


def key(**changes: object) -> EngineKey:
    base = EngineKey(H100, "10.3.0", "fp16", SHA, 8)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_filename_names_every_part() -> None:
    assert engine_filename(key()) == (
        "c9c35c50b88e0a46_nvidia-h100-80gb-hbm3_sm90_trt10.3.0_fp16_b8.plan"
    )


@pytest.mark.parametrize(
    "change",
    [
        {"gpu": GpuInfo("NVIDIA A100-SXM4-80GB", (8, 0))},
        {"gpu": GpuInfo("NVIDIA H100 80GB HBM3", (9, 1))},  # same name, other capability
        {"tensorrt_version": "10.3.1"},
        {"tensorrt_version": "11.0.0"},
        {"precision": "fp32"},
        {"model_sha256": "0" * 64},
        {"max_batch": 16},
    ],
)
def test_any_change_gives_another_file(change: dict[str, object]) -> None:
    assert engine_filename(key(**change)) != engine_filename(key())


def test_filename_is_stable_and_safe() -> None:
    assert engine_filename(key()) == engine_filename(key())
    weird = key(gpu=GpuInfo("NVIDIA GeForce RTX 4090 / (laptop)", (8, 9)))
    name = engine_filename(weird)
    assert "/" not in name and " " not in name and "(" not in name
    assert slug("  ") == "unknown"


def test_strong_typing_starts_at_tensorrt_11() -> None:
    assert not key(tensorrt_version="10.13.0").strongly_typed
    assert key(tensorrt_version="11.0.0").strongly_typed
    assert key(tensorrt_version="12.1").strongly_typed


def test_fp16_source_onnx_depends_on_the_tensorrt_generation(tmp_path: Path) -> None:
    fp32, fp16 = tmp_path / "model.onnx", tmp_path / "model.fp16.onnx"
    fp32.write_bytes(b"x")
    # TensorRT 10: FP16 by builder flag, from the FP32 graph.
    assert onnx_for_precision(fp32, None, key(tensorrt_version="10.3.0")) == fp32
    # TensorRT 11: strongly typed, FP16 must come from the FP16 graph.
    with pytest.raises(EngineBuildError, match="strongly typed"):
        onnx_for_precision(fp32, None, key(tensorrt_version="11.0.0"))
    fp16.write_bytes(b"y")
    assert onnx_for_precision(fp32, fp16, key(tensorrt_version="11.0.0")) == fp16
    assert onnx_for_precision(fp32, fp16, key(tensorrt_version="11.0.0", precision="fp32")) == fp32


def test_bad_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="precision"):
        key(precision="int8")
    with pytest.raises(ValueError, match="max_batch"):
        key(max_batch=0)
    with pytest.raises(ValueError, match="sha256"):
        key(model_sha256="not-a-hash")


def test_nvidia_smi_output_is_parsed() -> None:
    out = "NVIDIA H100 80GB HBM3, 9.0\nNVIDIA H100 80GB HBM3, 9.0\n"
    assert parse_nvidia_smi(out) == H100
    assert parse_nvidia_smi("NVIDIA GeForce RTX 3090, 8.6") == GpuInfo(
        "NVIDIA GeForce RTX 3090", (8, 6)
    )
    assert parse_nvidia_smi("") is None
    assert parse_nvidia_smi("No devices were found") is None


@pytest.mark.skipif(tensorrt_version() is not None, reason="TensorRT is installed here")
def test_without_tensorrt_the_key_says_why() -> None:
    with pytest.raises(EngineBuildError, match="TensorRT is not installed"):
        machine_key(SHA, "fp16", 8)
