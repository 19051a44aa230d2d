"""A real `fame-node run` with JSON logs and its metrics endpoint: files dropped into the
inbox move the counters and histograms served over HTTP, /healthz answers, every log line
is a JSON object that names no file, and the audit log of the run verifies."""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance.phantom import PhantomSpec, make_phantom
from appliance.phantom_dicom import write_phantom_png
from tests.e2e.nodeutil import jobs, node_env, run_cli, start_node, stop_node, wait_for

TERMINAL = {"done", "rejected", "failed", "duplicate"}


@pytest.fixture
def node_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="fame-node-obs-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_live_node_serves_metrics_health_and_json_logs(node_root: Path) -> None:
    port = _free_port()
    env = node_env(
        node_root,
        FAME_NODE_METRICS__ENABLED="true",
        FAME_NODE_METRICS__PORT=str(port),
        FAME_NODE_LOGGING__FORMAT="json",
        FAME_NODE_PROCESSING__WORKERS="1",
    )
    console = node_root / "console.log"
    proc = start_node(env, console)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: _get(base + "/healthz")[0] == 200 or proc.poll() is not None,
            120,
            "the metrics endpoint",
        )
        assert proc.poll() is None, console.read_text()
        before = _samples(_get(base + "/metrics")[1].decode())
        assert before[("fame_node_files_processed_total", ())] == 0
        inbox = node_root / "inbox"
        write_phantom_png(inbox / "DOE_JANE_left.png", make_phantom(PhantomSpec(seed=11)))
        (inbox / "SMITH_JOHN_notes.png").write_bytes(b"not an image at all\n" * 10)
        db = node_root / "fame-node.sqlite3"
        wait_for(
            lambda: len(jobs(db)) == 2 and all(j["status"] in TERMINAL for j in jobs(db)),
            120,
            "both files processed",
        )
        statuses = sorted(j["status"] for j in jobs(db))
        assert statuses == ["done", "rejected"], jobs(db)
        (rejected,) = [j for j in jobs(db) if j["status"] == "rejected"]
        code, body = _get(base + "/metrics")
        assert code == 200
        after = _samples(body.decode())
        assert after[("fame_node_files_processed_total", ())] == 1
        code_label = (("error_code", rejected["error_code"]),)
        assert after[("fame_node_files_rejected_total", code_label)] == 1
        assert after[("fame_node_job_seconds_count", (("outcome", "done"),))] == 1
        assert after[("fame_node_job_seconds_count", (("outcome", "rejected"),))] == 1
        assert after[("fame_node_inference_seconds_count", ())] == 1
        assert after[("fame_node_decode_seconds_count", ())] == 2
        assert after[("fame_node_end_to_end_seconds_count", ())] == 1
        assert after[("fame_node_jobs", (("status", "queued"),))] == 0
        assert any(name == "fame_node_model_info" for name, _ in after)
        assert "DOE" not in body.decode() and "SMITH" not in body.decode()
        code, body = _get(base + "/healthz")
        health = json.loads(body)
        assert code == 200 and health["status"] == "ok" and health["conditions"] == []
    finally:
        exit_code = stop_node(proc)
    assert exit_code == 0, console.read_text()
    # Every line the service wrote to its log file is one JSON object, names no file, and
    # the lines about a job carry its id.
    lines = (node_root / "work" / "logs" / "fame-node.log").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert {"time", "level", "logger", "message", "thread"} <= set(records[0])
    done_id = next(j["id"] for j in jobs(db) if j["status"] == "done")
    about_done = [r for r in records if r.get("job") == done_id]
    assert any(" done: " in r["message"] for r in about_done), records
    text = "\n".join(lines)
    for name in ("DOE", "JANE", "SMITH", "notes.png"):
        assert name not in text
    # The run's results and rejection are in the audit log, and its chain holds.
    verify = run_cli(env, "audit", "--verify")
    assert verify.returncode == 0 and "audit log intact: 4 row(s)" in verify.stdout, verify
    listed = run_cli(env, "audit", "--json")
    entries = [json.loads(line) for line in listed.stdout.splitlines()]
    # The initial model recorded at the first start, then the two files in either order.
    assert [e["action"] for e in entries[:2]] == ["model_installed", "model_activated"]
    assert sorted(e["action"] for e in entries[2:]) == ["job_rejected", "result"]
    (result,) = [e for e in entries if e["action"] == "result"]
    assert result["subject"] == f"job:{done_id}" and result["detail"]["frames"][0]["diagnosis"]


def test_a_metrics_port_in_use_stops_the_start_with_what_to_change(node_root: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = node_env(
            node_root, FAME_NODE_METRICS__ENABLED="true", FAME_NODE_METRICS__PORT=str(port)
        )
        out = run_cli(env, "run", timeout=120)
    assert out.returncode == 1, out
    assert f"metrics.port = {port} on 127.0.0.1 cannot be bound" in out.stderr
    assert "choose another metrics.port" in out.stderr
