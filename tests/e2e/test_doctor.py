"""`fame-node doctor`, the real CLI: green on a fresh node, and each broken thing named with
what to do (exit code 1 when it blocks the node)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from tests.e2e.nodeutil import node_env, run_cli


def _doctor(root: Path, **env: str) -> tuple[int, list[dict[str, Any]]]:
    done = run_cli(node_env(root, **env), "doctor", "--json", timeout=300)
    findings = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert findings, done.stderr[-2000:]
    return done.returncode, findings


def _levels(findings: list[dict[str, Any]], check: str) -> set[str]:
    return {f["level"] for f in findings if f["check"] == check}


def test_a_fresh_node_is_healthy(tmp_path: Path) -> None:
    code, findings = _doctor(tmp_path / "node")
    assert code == 0, [f for f in findings if f["level"] == "fail"]
    checks = {f["check"] for f in findings}
    assert {"python", "packages", "config", "disk", "store", "model", "backend", "decoder"} <= (
        checks
    )
    assert _levels(findings, "decoder") == {"ok"}  # a real child decoded the probe
    assert any("ran a warm-up batch" in f["detail"] for f in findings if f["check"] == "backend")


def test_broken_things_are_named_with_what_to_do(tmp_path: Path) -> None:
    root = tmp_path / "node"
    code, _ = _doctor(root)  # creates the folders and the store
    assert code == 0
    (root / "results").chmod(0o755)  # opened to others by hand
    with sqlite3.connect(root / "fame-node.sqlite3") as conn:  # a job set aside
        conn.execute(
            "INSERT INTO jobs (path, status, error_code, reason, created_at, updated_at) "
            "VALUES ('x.png', 'failed', 'internal_error', 'bug', 'x', 'x')"
        )
    code, findings = _doctor(root)
    warns = {f["detail"]: f["fix"] for f in findings if f["level"] == "warn"}
    assert any("results" in d and "open to other users" in d for d in warns)
    assert any(d.startswith("1 job(s) failed") and "jobs retry" in fix for d, fix in warns.items())
    assert code == 0  # warnings do not block the node

    # A model bundle whose weights were changed after it was installed blocks the node.
    model = next((root / "models").glob("*@*/model.onnx"))
    model.write_bytes(model.read_bytes()[:-1] + b"\0")
    code, findings = _doctor(root)
    assert code == 1
    failed = [f for f in findings if f["level"] == "fail"]
    assert any(f["check"] == "model" and "checksum" in f["detail"] for f in failed), failed
    assert all(f["fix"] for f in failed)
