"""Backend choice on this machine: order, fallbacks with reasons, micro-batch wrapping."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from appliance.bundle import Bundle
from appliance.config import RuntimeConfig
from appliance.cpus import usable_cpus
from appliance.errors import BackendError
from appliance.runtime import factory
from appliance.runtime.base import ModelOutputs
from appliance.runtime.batcher import MicroBatcher
from appliance.runtime.factory import (
    CUDA,
    ORDER,
    create_backend,
    describe_sharing,
    select_backend,
)
from appliance.runtime.onnx_backend import OnnxRuntimeBackend
from appliance.runtime.torch_backend import nvidia_device_present


def _has_cuda_torch() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _has_tensorrt() -> bool:
    from exporters.tensorrt import tensorrt_version

    return tensorrt_version() is not None


class _Fake:
    name = "fake"
    device = "FakeDevice"

    def infer(self, batch: np.ndarray) -> ModelOutputs:
        n = len(batch)
        return ModelOutputs(batch[:, 0], np.full((n, 3), 1 / 3, np.float32))


def test_order_is_the_documented_one() -> None:
    assert ORDER == ("tensorrt", "onnxruntime-cuda", "torch-cuda", "onnxruntime-cpu")


def test_auto_takes_what_this_machine_really_runs(tiny_bundle: Bundle) -> None:
    backend, skipped = select_backend(tiny_bundle, RuntimeConfig(backend="auto"))
    names = [s.backend for s in skipped]
    # Everything before the chosen one was tried, in order, and skipped with a reason.
    assert names == list(ORDER[: len(names)])
    assert all(s.reason for s in skipped)
    if not _has_tensorrt():
        assert "TensorRT is not installed" in skipped[0].reason
    if CUDA not in factory.available_providers() and not _has_tensorrt():
        assert "no CUDA provider" in skipped[1].reason
    if not (_has_tensorrt() or CUDA in factory.available_providers() or _has_cuda_torch()):
        assert isinstance(backend, OnnxRuntimeBackend)
        assert backend.device == "CPUExecutionProvider"
        assert names == ["tensorrt", "onnxruntime-cuda", "torch-cuda"]
        # checked before importing torch
        assert "has no weights.safetensors or heads.safetensors" in skipped[2].reason


def test_torch_cuda_reason_names_the_missing_gpu(tiny_bundle_with_weights: Bundle) -> None:
    if _has_cuda_torch():
        pytest.skip("torch has CUDA here: the torch-cuda backend is available")
    with pytest.raises(BackendError, match="no CUDA device"):
        select_backend(tiny_bundle_with_weights, RuntimeConfig(backend="torch-cuda"))


def test_without_an_nvidia_device_torch_is_not_imported(
    tiny_bundle_with_weights: Bundle,
) -> None:
    """The torch-cuda check costs no torch import on a CPU node (about 250 MiB of the
    service's memory, held for its whole life, for a backend it cannot use)."""
    if nvidia_device_present():
        pytest.skip("this machine has an NVIDIA device node: torch is rightly imported")
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from appliance.bundle import load_bundle\n"
        "from appliance.config import RuntimeConfig\n"
        "from appliance.runtime.factory import select_backend\n"
        f"bundle = load_bundle(Path({str(tiny_bundle_with_weights.path)!r}))\n"
        "backend, skipped = select_backend(bundle, RuntimeConfig(backend='auto'))\n"
        "print(backend.name, [s.backend for s in skipped], 'torch' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert "'torch-cuda'" in done.stdout, done.stdout  # the check ran and was skipped
    assert done.stdout.split()[-1] == "False", done.stdout


@pytest.mark.parametrize("name", ["tensorrt", "onnxruntime-cuda"])
def test_a_named_backend_that_cannot_run_is_an_error(tiny_bundle: Bundle, name: str) -> None:
    if name == "tensorrt" and _has_tensorrt() and _has_cuda_torch():
        pytest.skip("TensorRT and a GPU are here")
    if name == "onnxruntime-cuda" and CUDA in factory.available_providers():
        pytest.skip("ONNX Runtime has CUDA here")
    with pytest.raises(BackendError, match=f"runtime.backend = '{name}' cannot run here"):
        select_backend(tiny_bundle, RuntimeConfig(backend=name))


def test_fallback_goes_down_the_order(tiny_bundle: Bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(bundle: Bundle, config: RuntimeConfig) -> _Fake:
        raise BackendError("simulated: engine for another GPU could not be rebuilt")

    monkeypatch.setitem(factory.LOADERS, "tensorrt", broken)
    monkeypatch.setitem(factory.LOADERS, "onnxruntime-cuda", lambda b, c: _Fake())
    backend, skipped = select_backend(tiny_bundle, RuntimeConfig())
    assert backend.name == "fake"
    assert [str(s) for s in skipped] == [
        "tensorrt: simulated: engine for another GPU could not be rebuilt"
    ]


def test_nothing_runs_names_every_reason(
    tiny_bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(bundle: Bundle, config: RuntimeConfig) -> _Fake:
        raise BackendError("nope")

    for name in ORDER:
        monkeypatch.setitem(factory.LOADERS, name, broken)
    with pytest.raises(BackendError, match="no inference backend runs here: tensorrt: nope"):
        select_backend(tiny_bundle, RuntimeConfig())


def test_on_the_cpu_each_worker_runs_its_own_frames(tiny_bundle: Bundle) -> None:
    config = RuntimeConfig(backend="onnxruntime-cpu")
    shared = create_backend(tiny_bundle, config, workers=2)
    assert isinstance(shared, OnnxRuntimeBackend)  # no micro-batcher on the CPU by default
    assert (shared.name, shared.device) == ("onnxruntime", "CPUExecutionProvider")
    assert shared.skipped == ()
    cpus = usable_cpus()
    assert shared.intra_op_threads == max(1, cpus // 2)  # the CPUs shared out
    assert create_backend(tiny_bundle, config, workers=cpus).intra_op_threads == 1
    assert create_backend(tiny_bundle, config, workers=1).intra_op_threads == cpus
    fixed = create_backend(tiny_bundle, RuntimeConfig(intra_op_threads=3), workers=8)
    assert fixed.intra_op_threads == 3  # a configured number is kept


def test_the_sharing_is_described_for_status(tiny_bundle: Bundle) -> None:
    per_worker = create_backend(tiny_bundle, RuntimeConfig(intra_op_threads=1), workers=3)
    assert describe_sharing(per_worker, 3) == (
        "3 worker(s), each running its own frames, 1 ONNX Runtime thread(s) each"
    )
    batched = create_backend(
        tiny_bundle, RuntimeConfig(micro_batch_on_cpu=True, micro_batch_max=4), workers=3
    )
    assert describe_sharing(batched, 3) == (
        "3 worker(s); frames merged into batches of up to 4 (micro-batching)"
    )


def test_micro_batching_on_the_cpu_when_asked(tiny_bundle: Bundle) -> None:
    config = RuntimeConfig(backend="onnxruntime-cpu", micro_batch_on_cpu=True)
    shared = create_backend(tiny_bundle, config, workers=2)
    assert isinstance(shared, MicroBatcher)
    assert (shared.name, shared.device) == ("onnxruntime", "CPUExecutionProvider")
    assert shared.inner.intra_op_threads  # type: ignore[attr-defined] == usable_cpus()  # one caller: the batcher
    assert isinstance(create_backend(tiny_bundle, config), MicroBatcher)  # callers unknown
    alone = create_backend(tiny_bundle, config, workers=1)
    assert isinstance(alone, OnnxRuntimeBackend)
    off = create_backend(tiny_bundle, config.model_copy(update={"micro_batch_max": 1}), workers=4)
    assert not isinstance(off, MicroBatcher)


def test_skipped_reasons_travel_with_the_backend(tiny_bundle: Bundle) -> None:
    backend = create_backend(tiny_bundle, RuntimeConfig(), workers=2)
    skipped = backend.skipped  # type: ignore[attr-defined]
    assert isinstance(skipped, tuple)
    if backend.device == "CPUExecutionProvider":
        assert len(skipped) == 3


def test_engine_cache_dir_default_and_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert RuntimeConfig().engine_dir() == tmp_path / "fame-node" / "engines"
    assert RuntimeConfig(engine_cache_dir=tmp_path / "e").engine_dir() == tmp_path / "e"


def test_the_session_runs_the_bytes_verified_not_the_file_now_on_disk(tmp_path: Path) -> None:
    from appliance.bundle import load_bundle
    from tests.exporters.tinybundle import make_tiny_bundle, tiny_net

    verified = load_bundle(make_tiny_bundle(tmp_path / "a"))
    other = make_tiny_bundle(tmp_path / "b", tiny_net(seed=1))
    x = np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)
    want = create_backend(verified, RuntimeConfig(backend="onnxruntime-cpu")).infer(x)
    # swapped after verification (a copy tool, an attacker): the node must not pick it up
    (verified.path / "model.onnx").write_bytes((other / "model.onnx").read_bytes())
    got = create_backend(verified, RuntimeConfig(backend="onnxruntime-cpu")).infer(x)
    np.testing.assert_array_equal(got.lesion_prob, want.lesion_prob)
    np.testing.assert_array_equal(got.class_prob, want.class_prob)
