"""Micro-batching: concurrent `infer` calls from worker threads merged into one batch.

The service's workers each run a job through the pipeline and call ``backend.infer`` with
that job's frames. `MicroBatcher` wraps any backend with the same interface: a call hands
its batch to one dispatcher thread and waits; the dispatcher takes the first waiting
request, gathers those that arrive within ``wait_ms`` (up to ``max_batch`` frames in all,
same frame shape), runs them as one batch and hands each caller its own rows, in order.
The pipeline does not notice; the backend runs larger batches (better GPU use), and only
one inference runs at a time, so worker threads' preprocessing and writing overlap with
it instead of competing with it for the CPU's cores.

An exception raised by the backend reaches every caller whose frames were in that batch.
A request larger than ``max_batch`` runs on its own. The dispatcher thread is started on
demand and ends after ``idle_s`` without requests (so a model swap leaves no thread behind).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from appliance.runtime.base import InferenceBackend, ModelOutputs


@dataclass(eq=False)  # identity: deque.remove must not compare the arrays
class _Request:
    batch: NDArray[np.float32]
    future: Future[ModelOutputs] = field(default_factory=Future)


@dataclass
class BatcherStats:
    """Counters for status and benchmarks (updated by the dispatcher only)."""

    calls: int = 0  # infer() calls served
    batches: int = 0  # backend.infer() calls made
    frames: int = 0

    @property
    def mean_batch(self) -> float:
        return self.frames / self.batches if self.batches else 0.0


class MicroBatcher:
    """An `InferenceBackend` that merges concurrent calls to `inner`."""

    def __init__(
        self,
        inner: InferenceBackend,
        *,
        max_batch: int = 8,
        wait_ms: float = 2.0,
        idle_s: float = 30.0,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if wait_ms < 0:
            raise ValueError(f"wait_ms must be >= 0, got {wait_ms}")
        self.inner = inner
        self.max_batch = max_batch
        self.wait_s = wait_ms / 1000.0
        self.idle_s = idle_s
        self.stats = BatcherStats()
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def device(self) -> str:
        return self.inner.device

    def __getattr__(self, item: str) -> object:
        # Backend-specific attributes (`active`, `skipped`, ...) read through the wrapper.
        if item == "inner":
            raise AttributeError(item)
        return getattr(self.inner, item)

    def infer(self, batch: NDArray[np.float32]) -> ModelOutputs:
        request = _Request(batch)
        with self._cond:
            self._queue.append(request)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._dispatch, name="fame-microbatch", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()
        return request.future.result()

    # -- dispatcher --------------------------------------------------------------------
    def _take(self) -> list[_Request] | None:
        """The next group of requests to run together; None when idle for `idle_s`."""
        with self._cond:
            if not self._queue and not self._cond.wait_for(
                lambda: bool(self._queue), timeout=self.idle_s
            ):
                self._thread = None
                return None
            first = self._queue.popleft()
            group = [first]
            frames = len(first.batch)
            deadline = time.monotonic() + self.wait_s
            while frames < self.max_batch:
                fitting = next(
                    (
                        r
                        for r in self._queue
                        if r.batch.shape[1:] == first.batch.shape[1:]
                        and frames + len(r.batch) <= self.max_batch
                    ),
                    None,
                )
                if fitting is not None:
                    self._queue.remove(fitting)
                    group.append(fitting)
                    frames += len(fitting.batch)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return group

    def _dispatch(self) -> None:
        try:
            while True:
                group = self._take()
                if group is None:
                    return
                self._run(group)
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            with self._cond:
                pending, self._queue = list(self._queue), deque()
                self._thread = None
            for r in pending:
                r.future.set_exception(exc)
            raise

    def _run(self, group: list[_Request]) -> None:
        try:
            if len(group) == 1:
                results = [self.inner.infer(group[0].batch)]
            else:
                merged = self.inner.infer(np.concatenate([r.batch for r in group]))
                results = []
                start = 0
                for r in group:
                    stop = start + len(r.batch)
                    results.append(merged.rows(start, stop))
                    start = stop
        except BaseException as exc:  # every waiting caller gets the error, none hangs
            for r in group:
                r.future.set_exception(exc)
            return
        self.stats.calls += len(group)
        self.stats.batches += 1
        self.stats.frames += sum(len(r.batch) for r in group)
        for r, out in zip(group, results, strict=True):
            r.future.set_result(out)
