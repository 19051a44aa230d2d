"""Passing faults under a live node: each ridden out by itself, with nothing lost.

Three faults, each against a fresh `fame-node run` with the default retry backoff
(`ingest.retry_initial_s` 2 s, doubling): the results folder on a small tmpfs that is full,
the store (database, its WAL and lock) on a small tmpfs that is full, and the store locked
by another process (a real sqlite3 connection holding BEGIN EXCLUSIVE in a child process,
longer than the node's 10 s busy timeout). Files are dropped while the fault holds; the
fault is held `HOLD_S`, then cleared (the filler deleted, the child's transaction rolled
back). Measured: what the node said it waited for (its status file), what was done or
failed during the fault, the seconds from the clear to the first job done and to the
last. Then every file must be done exactly once (`verify.exactly_once`).

Mounting needs root in a container that allows it; otherwise the two disk-full runs skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.reliability.figures import out_dir, rounded, write_figures
from tests.reliability.harness import LiveNode, drop, job_counts, wait_until
from tests.reliability.inputs import Inputs
from tests.reliability.verify import exactly_once, sha256

pytestmark = pytest.mark.reliability

N_FILES = 8
HOLD_S = 15.0
# The store's busy timeout (10 s) passes before the node learns it is locked, and its
# status file is rewritten every 5 s: a lock held 25 s shows in it.
HOLD_LOCK_S = 25.0
RESUME_BOUND_S = 120.0  # a fault of 15 s: the backoff has reached 8-16 s; two rounds of it


def _mount_tmpfs(folder: Path, size: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0750", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not permitted'})")


def _umount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _fill(folder: Path) -> Path:
    """Fill the file system of `folder` to the last byte; returns the filler file."""
    filler = folder / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for chunk in (1 << 16, 512, 1):  # unbuffered: ENOSPC comes from the write itself
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                continue
    finally:
        os.close(fd)
    return filler


def _waiting_for(node: LiveNode) -> list[str]:
    try:
        data = json.loads((node.root / "work" / "service-status.json").read_text("utf-8"))
    except (OSError, ValueError):
        return []
    return sorted({str(w["condition"]) for w in data.get("waiting_for", [])})


_LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()  # held until the test writes a line
conn.execute("ROLLBACK")
conn.close()
"""


class Locker:
    """A child process holding the store in BEGIN EXCLUSIVE until `release()`."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.proc: subprocess.Popen[str] | None = None

    def hold(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _LOCKER, str(self.db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "locked"

    def release(self) -> None:
        if self.proc is None or self.proc.stdin is None:
            raise RuntimeError("the locker was never started: call hold() first")
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        if self.proc.wait(30) != 0:
            raise RuntimeError(f"the locker exited {self.proc.returncode}")

    def ensure_gone(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def ride_out(
    tmp_path: Path,
    node: LiveNode,
    name: str,
    what: str,
    induce: Callable[[], None],
    clear: Callable[[], None],
    hold_s: float = HOLD_S,
) -> tuple[dict[str, int], list[str]]:
    """Run the fault; returns (jobs by status when it cleared, conditions waited for)."""
    started = datetime.now(UTC)
    load0 = list(os.getloadavg())
    inputs = Inputs.create(tmp_path / "staging")
    staged = [inputs.make(i) for i in range(N_FILES)]
    expected = {p.name: sha256(p) for p in staged}
    seen: set[str] = set()
    try:
        node.start()
        induce()
        t_fault = time.monotonic()
        for p in staged:
            drop(p, node.inbox)
        while time.monotonic() - t_fault < hold_s:
            seen.update(_waiting_for(node))
            time.sleep(0.5)
        during = job_counts(node.db)
        clear()
        t_clear = time.monotonic()
        first_s = wait_until(
            lambda: job_counts(node.db).get("done", 0) > during.get("done", 0),
            RESUME_BOUND_S,
            "the first job done after the fault cleared",
            0.05,
        )
        all_s = first_s + wait_until(
            lambda: job_counts(node.db).get("done", 0) >= N_FILES,
            RESUME_BOUND_S + 60,
            "every file done after the fault cleared",
            0.1,
        )
        seen.update(_waiting_for(node))
        try:  # the status file is rewritten every 5 s: two beats to show the fault gone
            cleared_s: float | None = wait_until(lambda: not _waiting_for(node), 12, "", 0.2)
        except AssertionError:
            cleared_s = None
        status_clear_s = None if cleared_s is None else time.monotonic() - t_clear
        code, _ = node.terminate()
    finally:
        node.ensure_stopped()
    assert code == 0, node.tail()
    assert during.get("failed", 0) == 0, f"jobs failed during the fault: {during}"
    counts = exactly_once(node.root, node.db, node.jobs(), expected)
    figures = {
        "_loadavg_at_start": load0,
        "fault": what,
        "files": N_FILES,
        "hold_s": hold_s,
        "at_clear": during,
        "waited_for": sorted(seen),
        "status_clear_after_clear_s": rounded(status_clear_s, 1) if status_clear_s else None,
        "log_tracebacks": node.log.read_bytes().count(b"Traceback"),
        "first_done_after_clear_s": rounded(first_s, 2),
        "all_done_after_clear_s": rounded(all_s, 2),
        "clear_to_end_wall_s": rounded(time.monotonic() - t_clear, 1),
        "check": counts,
    }
    write_figures(
        out_dir(tmp_path / "figures"),
        name,
        command=f".venv/bin/pytest -m reliability tests/reliability/test_faults.py -k {name}",
        figures=figures,
        started=started,
    )
    return during, sorted(seen)


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    mounted: list[Path] = []
    yield mounted
    for m in mounted:
        _umount(m)
    os.sync()


def test_fault_results_disk_full(tmp_path: Path, mounts: list[Path]) -> None:
    results = tmp_path / "node" / "results"
    _mount_tmpfs(results, "2m")
    mounts.append(results)
    node = LiveNode(tmp_path / "node")
    filler: list[Path] = []
    during, waited = ride_out(
        tmp_path,
        node,
        "fault_results_full",
        "results folder on a 2 MiB tmpfs, filled",
        lambda: filler.append(_fill(results)),
        lambda: filler[0].unlink(),
    )
    assert during.get("done", 0) == 0, f"jobs done with no space for their results: {during}"
    assert any("disk space" in w for w in waited), waited


def test_fault_store_disk_full(tmp_path: Path, mounts: list[Path]) -> None:
    store = tmp_path / "store"
    _mount_tmpfs(store, "16m")
    mounts.append(store)
    node = LiveNode(tmp_path / "node", FAME_NODE_PATHS__DATABASE=str(store / "fame-node.sqlite3"))
    filler: list[Path] = []
    during, waited = ride_out(
        tmp_path,
        node,
        "fault_store_full",
        "store (database, WAL, lock) on a 16 MiB tmpfs, filled after the start",
        lambda: filler.append(_fill(store)),
        lambda: filler[0].unlink(),
    )
    assert waited, f"status named no wait while the store was full (jobs then: {during})"


def test_fault_store_locked(tmp_path: Path) -> None:
    node = LiveNode(tmp_path / "node")
    locker = Locker(node.db)
    try:
        during, waited = ride_out(
            tmp_path,
            node,
            "fault_store_locked",
            "store in BEGIN EXCLUSIVE by another process (sqlite3), past the 10 s busy timeout",
            locker.hold,
            locker.release,
            hold_s=HOLD_LOCK_S,
        )
    finally:
        locker.ensure_gone()
    assert during.get("done", 0) == 0, f"jobs committed done through a lock: {during}"
    assert waited, "the node did not say what it waited for"
