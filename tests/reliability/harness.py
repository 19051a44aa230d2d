"""A live `fame-node run` for the reliability figures: start it, wait until it is ready,
kill or stop it, sample its memory and queue while it works, and read back what it did.

Everything here is real: the node is a subprocess on a temporary root, inputs are renamed
into its real inbox (as a PACS export finishes), memory is read from /proc, the queue from
the node's own SQLite store through a read-only connection.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tests.e2e.hostile.memwatch import descendants
from tests.e2e.nodeutil import jobs, node_env, start_node

TERMINAL = frozenset({"done", "rejected", "duplicate", "failed"})
_KIB = 1024


def _status_kib(pid: int, name: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return None


def _rollup_kib(pid: int) -> dict[str, int]:
    """The process's `Pss:` and `Anonymous:` from one read of its smaps_rollup (KiB; an
    empty dict when it is gone or the kernel does not have the file)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return {}
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("Pss", "Anonymous"):
            out[key] = int(rest.split()[0])
    return out


@dataclass(frozen=True)
class Sample:
    """One look at the node. Memory in bytes; `child_rss` is the largest child (the
    decoding sandboxes are the service's children) and `child_hwm` the largest peak RSS
    (VmHWM) any child had reached by then.

    `tree_anon` is the tree's anonymous memory (heaps, arenas, stacks: what a leak grows),
    summed over its processes. Unlike PSS it does not move when some other process that
    maps the same libraries (a test runner, another venv's interpreter) starts or exits,
    and unlike RSS it leaves out file pages the kernel may drop and read back: the figure
    a leak criterion can rest on. The children are fresh interpreters, not forks, so no
    page is counted twice."""

    at: float  # time.monotonic()
    main_rss: int
    child_rss: int
    child_hwm: int
    tree_rss: int
    tree_pss: int
    tree_anon: int
    n_processes: int
    counts: dict[str, int] | None  # jobs by status, when the queue was read with it


def job_counts(db: Path) -> dict[str, int]:
    """Jobs by status, read-only (an empty dict before the schema exists)."""
    if not db.exists():
        return {}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return {s: n for s, n in conn.execute("SELECT status, count(*) FROM jobs GROUP BY status")}
    except sqlite3.OperationalError:  # not created yet, or locked past the timeout
        return {}
    finally:
        conn.close()


@dataclass
class Sampler:
    """A thread sampling the process tree below `pid` every `interval_s` (and the queue in
    `db` every `queue_every` samples) until stopped. Use as a context manager."""

    pid: int
    db: Path | None = None
    interval_s: float = 0.2
    queue_every: int = 1
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self, with_queue: bool) -> Sample:
        main_rss = child_rss = child_hwm = rss = pss = anon = n = 0
        for p in descendants(self.pid):
            p_rss = _status_kib(p, "VmRSS")
            if p_rss is None:  # gone, or a zombie
                continue
            n += 1
            rss += p_rss * _KIB
            rollup = _rollup_kib(p)
            pss += rollup.get("Pss", p_rss) * _KIB
            anon += rollup.get("Anonymous", _status_kib(p, "RssAnon") or 0) * _KIB
            if p == self.pid:
                main_rss = p_rss * _KIB
            else:
                child_rss = max(child_rss, p_rss * _KIB)
                child_hwm = max(child_hwm, (_status_kib(p, "VmHWM") or 0) * _KIB)
        counts = job_counts(self.db) if with_queue and self.db is not None else None
        return Sample(time.monotonic(), main_rss, child_rss, child_hwm, rss, pss, anon, n, counts)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            self.samples.append(self.sample(i % self.queue_every == 0))
            i += 1
            self._stop.wait(self.interval_s)

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at <= end]


def mib(n_bytes: float) -> float:
    return round(n_bytes / 2**20, 1)


class LiveNode:
    """`fame-node run` on `root` (inbox made), started and restarted as the test says."""

    def __init__(self, root: Path, **overrides: str) -> None:
        self.root = root
        (root / "inbox").mkdir(parents=True, exist_ok=True)
        defaults = {"FAME_NODE_RUNTIME__INTRA_OP_SPINNING": "false"}  # 2 shared cores
        self.env = node_env(root, **{**defaults, **overrides})
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "node.log"

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def db(self) -> Path:
        return Path(self.env.get("FAME_NODE_PATHS__DATABASE", self.root / "fame-node.sqlite3"))

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the node was not started: call start() first")
        return self.proc.pid

    def start(self, timeout: float = 180) -> float:
        """Start the node; returns the seconds until it wrote its status file (ready)."""
        t0 = time.monotonic()
        self.proc = start_node(self.env, self.log)
        status = self.root / "work" / "service-status.json"
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fame-node run exited {self.proc.returncode}:\n{self.tail()}")
            if _status_pid(status) == self.proc.pid:
                return time.monotonic() - t0
            time.sleep(0.05)
        raise RuntimeError(f"fame-node run not ready after {timeout:.0f} s:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL, as a power cut or the OOM killer would."""
        os.kill(self.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(30)

    def terminate(self, timeout: float = 120) -> tuple[int, float]:
        """SIGTERM (systemctl stop); returns (exit code, seconds until the process exited)."""
        if self.proc is None:
            raise RuntimeError("the node was not started: call start() first")
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.terminate()
        code = self.proc.wait(timeout)
        return code, time.monotonic() - t0

    def ensure_stopped(self) -> None:
        """Leave no node behind, whatever the test did (SIGTERM, then SIGKILL)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)

    def jobs(self) -> list[dict[str, object]]:
        return jobs(self.db)

    def tail(self, n_chars: int = 3000) -> str:
        try:
            return self.log.read_bytes()[-n_chars:].decode(errors="replace")
        except OSError:
            return "(no log)"


def _status_pid(status: Path) -> int | None:
    import json

    try:
        data = json.loads(status.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return int(data["pid"]) if data.get("running") else None


def drop(src: Path, inbox: Path) -> datetime:
    """Rename a finished file from staging (same file system) into the inbox; returns when."""
    os.rename(src, inbox / src.name)
    return datetime.now(UTC)


def wait_until(pred: object, timeout: float, what: str, poll: float = 0.1) -> float:
    """Poll `pred()` until true; returns the seconds it took. Raises on timeout."""
    if not callable(pred):
        raise TypeError(f"expected a callable predicate, got {type(pred).__name__}")
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def by_status(rows: list[dict[str, object]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[str(r["status"])] = out.get(str(r["status"]), 0) + 1
    return out
