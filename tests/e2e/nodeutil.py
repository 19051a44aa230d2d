"""Helpers for end-to-end tests: a real `fame-node` process on a temporary node folder."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


def clean_env() -> dict[str, str]:
    """The environment without any FAME_NODE_* setting (so a --config file rules)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAME_NODE_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def node_env(root: Path, **overrides: str) -> dict[str, str]:
    env = clean_env()
    env.update(
        {
            "FAME_NODE_PATHS__ROOT": str(root),
            "FAME_NODE_INGEST__RESCAN_INTERVAL_S": "1.0",
            "FAME_NODE_INGEST__SETTLE_S": "0.2",
            "FAME_NODE_PROCESSING__WORKERS": "2",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(overrides)
    return env


def fame_node(*args: str) -> list[str]:
    return [sys.executable, "-m", "appliance.cli", *args]


def run_cli(
    env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fame_node(*args), env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )


def start_node(
    env: dict[str, str], log: Path, *, drop_caps: bool = False
) -> subprocess.Popen[bytes]:
    """Start `fame-node run`; `drop_caps` runs it (as root) without the capabilities that
    let root read any file, so file permissions apply to it as to a service user."""
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    cmd = (prefix if drop_caps else []) + fame_node("run")
    with log.open("ab") as fh:
        return subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=fh, stderr=subprocess.STDOUT)


def jobs(db: Path) -> list[dict[str, Any]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM jobs ORDER BY id")]
    except sqlite3.OperationalError:  # schema not created yet
        return []
    finally:
        conn.close()


def results(db: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        rows = [dict(r) for r in conn.execute("SELECT * FROM results ORDER BY job_id, frame_index")]
    finally:
        conn.close()
    for r in rows:
        r["probabilities"] = json.loads(r["probabilities"])
    return rows


def wait_for(pred: Callable[[], bool], timeout: float, what: str, poll: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def stop_node(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.terminate()
    return proc.wait(timeout)
