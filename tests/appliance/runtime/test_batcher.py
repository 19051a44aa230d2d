"""MicroBatcher: merged across threads, results equal to unbatched, order kept, errors."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from appliance.bundle import Bundle
from appliance.config import RuntimeConfig
from appliance.runtime.base import ModelOutputs
from appliance.runtime.batcher import MicroBatcher
from appliance.runtime.factory import create_backend


class Recording:
    """A deterministic backend: each frame's outputs depend on that frame only."""

    name = "recording"
    device = "test"

    def __init__(self, delay_s: float = 0.01) -> None:
        self.delay_s = delay_s
        self.batches: list[int] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def infer(self, batch: np.ndarray) -> ModelOutputs:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.batches.append(len(batch))
        try:
            time.sleep(self.delay_s)
            if np.isnan(batch).any():
                raise ValueError("NaN in the batch")
            lesion = batch[:, 0] * 2.0
            mean = batch.mean(axis=(1, 2, 3))
            cls = np.stack([mean, -mean, mean * 3], axis=1).astype(np.float32)
            return ModelOutputs(lesion.astype(np.float32), cls)
        finally:
            with self._lock:
                self.active -= 1


def _frames(seed: int, n: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, size, size)).astype(np.float32)


def test_concurrent_calls_are_merged_and_split_back_in_order() -> None:
    inner = Recording()
    batcher = MicroBatcher(inner, max_batch=8, wait_ms=20)
    requests = [_frames(i, 1 + i % 3) for i in range(24)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(batcher.infer, requests))
    for x, got in zip(requests, results, strict=True):
        want = inner.infer(x)
        np.testing.assert_array_equal(got.lesion_prob, want.lesion_prob)
        np.testing.assert_array_equal(got.class_prob, want.class_prob)
    merged = inner.batches[: batcher.stats.batches]
    assert batcher.stats.calls == 24
    assert batcher.stats.frames == sum(len(r) for r in requests)
    assert batcher.stats.batches < 24, "no call was merged"
    assert max(merged) <= 8
    assert inner.max_active == 1  # one inference at a time


def test_a_lone_caller_is_not_delayed_much() -> None:
    inner = Recording(delay_s=0)
    batcher = MicroBatcher(inner, max_batch=8, wait_ms=2)
    start = time.monotonic()
    for i in range(20):
        batcher.infer(_frames(i, 1))
    assert time.monotonic() - start < 2.0
    assert inner.batches == [1] * 20


def test_backend_errors_reach_every_caller_of_that_batch_only() -> None:
    inner = Recording(delay_s=0.02)
    batcher = MicroBatcher(inner, max_batch=4, wait_ms=30)
    bad = _frames(0, 1)
    bad[0, 0, 0, 0] = np.nan
    good = [_frames(i, 1) for i in range(1, 4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(batcher.infer, x) for x in [bad, *good]]
        outcomes: list[ModelOutputs | ValueError] = []
        for f in futures:
            try:
                outcomes.append(f.result())
            except ValueError as exc:
                outcomes.append(exc)
    assert isinstance(outcomes[0], ValueError)
    # Whoever shared the failing batch got the same error; nobody hangs, the batcher goes on.
    for x, out in zip(good, outcomes[1:], strict=True):
        if isinstance(out, ModelOutputs):
            np.testing.assert_array_equal(out.lesion_prob, x[:, 0] * 2)
        else:
            assert "NaN" in str(out)
    after = batcher.infer(good[0])
    np.testing.assert_array_equal(after.lesion_prob, good[0][:, 0] * 2)


def test_shapes_are_never_mixed_and_large_requests_run_alone() -> None:
    inner = Recording(delay_s=0.02)
    batcher = MicroBatcher(inner, max_batch=4, wait_ms=30)
    requests = [_frames(1, 2, 8), _frames(2, 2, 16), _frames(3, 9, 8), _frames(4, 1, 16)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(batcher.infer, requests))
    for x, got in zip(requests, results, strict=True):
        assert got.lesion_prob.shape == (len(x), x.shape[2], x.shape[3])
        np.testing.assert_array_equal(got.lesion_prob, x[:, 0] * 2)
    assert 9 in inner.batches  # larger than max_batch: on its own, not split or merged


def test_dispatcher_thread_ends_when_idle() -> None:
    batcher = MicroBatcher(Recording(delay_s=0), idle_s=0.05)
    batcher.infer(_frames(0, 1))
    thread = batcher._thread
    assert thread is not None
    thread.join(2.0)
    assert not thread.is_alive()
    batcher.infer(_frames(1, 1))  # and starts again on demand
    assert batcher._thread is not None and batcher._thread is not thread


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(Recording(), max_batch=0)
    with pytest.raises(ValueError, match="wait_ms"):
        MicroBatcher(Recording(), wait_ms=-1)


def test_onnxruntime_through_the_batcher_equals_unbatched(tiny_bundle: Bundle) -> None:
    plain = create_backend(tiny_bundle, RuntimeConfig(backend="onnxruntime-cpu"), workers=1)
    batched = create_backend(
        tiny_bundle,
        RuntimeConfig(backend="onnxruntime-cpu", micro_batch_wait_ms=20, micro_batch_on_cpu=True),
        workers=4,
    )
    assert isinstance(batched, MicroBatcher)
    requests = [_frames(i, 1 + i % 2, 32) for i in range(8)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(batched.infer, requests))
    for x, got in zip(requests, results, strict=True):
        want = plain.infer(x)
        np.testing.assert_allclose(got.lesion_prob, want.lesion_prob, atol=1e-5)
        np.testing.assert_allclose(got.class_prob, want.class_prob, atol=1e-5)
    assert batched.stats.batches < len(requests)
