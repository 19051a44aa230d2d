"""Sample the memory of a process tree from /proc while a test runs.

Every `interval_s` the sampler walks the tree below `pid` (``/proc/PID/task/*/children``,
recursively, so decoder subprocesses count) and sums, over its processes:

* PSS from ``/proc/PID/smaps_rollup`` (proportional set size: a page shared by n
  processes counts 1/n in each). This is the node's real footprint: a forked decoder
  shares most of its parent's pages, and summing RSS would count them twice.
* VmRSS from ``/proc/PID/status``, reported too, for comparison with `top`.

A process that exits between the walk and the read is skipped. Linux only.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

_KIB = 1024


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (depth first); those gone meanwhile are skipped."""
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                stack.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:  # the task or process exited
                continue
    return out


def _field_kib(path: Path, name: str) -> int | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return None


@dataclass
class Sample:
    at: float  # seconds since the watcher started
    pss_bytes: int
    rss_bytes: int
    n_processes: int


@dataclass
class MemWatch:
    """A background thread sampling the tree below `pid` (use as a context manager)."""

    pid: int
    interval_s: float = 0.1
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _t0: float = 0.0
    started: datetime = field(default_factory=lambda: datetime.now(UTC))

    def sample(self) -> Sample:
        pss = rss = n = 0
        for p in descendants(self.pid):
            p_pss = _field_kib(Path(f"/proc/{p}/smaps_rollup"), "Pss")
            p_rss = _field_kib(Path(f"/proc/{p}/status"), "VmRSS")
            if p_rss is None:  # gone, or a zombie (no memory left)
                continue
            n += 1
            rss += p_rss * _KIB
            pss += (p_pss if p_pss is not None else p_rss) * _KIB
        return Sample(time.monotonic() - self._t0, pss, rss, n)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.sample())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> MemWatch:
        self._t0 = time.monotonic()
        self.started = datetime.now(UTC)
        self._thread = threading.Thread(target=self._run, name="memwatch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def peak(self, since_s: float = 0.0) -> Sample:
        """The sample with the largest PSS total at or after `since_s`."""
        chosen = [s for s in self.samples if s.at >= since_s] or self.samples
        if not chosen:
            raise RuntimeError("no memory sample was taken: the process tree was never read")
        return max(chosen, key=lambda s: s.pss_bytes)

    def peak_between(self, start: datetime, end: datetime) -> Sample | None:
        """The largest-PSS sample taken between two wall-clock times (a job's run)."""
        lo = (start - self.started) / timedelta(seconds=1)
        hi = (end - self.started) / timedelta(seconds=1)
        inside = [s for s in self.samples if lo <= s.at <= hi]
        return max(inside, key=lambda s: s.pss_bytes) if inside else None

    def peak_rss(self) -> Sample:
        if not self.samples:
            raise RuntimeError("no memory sample was taken: the process tree was never read")
        return max(self.samples, key=lambda s: s.rss_bytes)
