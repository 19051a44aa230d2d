"""Metrics and health: what the pipeline observes, what is read from the store at a
scrape, and the HTTP endpoint answering real requests."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from appliance.config import load_config
from appliance.errors import ConfigError
from appliance.metrics import StoreCollector, label_value
from appliance.metrics_http import MetricsEndpoint, health_report
from appliance.phantom import PhantomSpec, make_phantom
from appliance.phantom_dicom import write_phantom_png
from appliance.service import NodeParts
from appliance.store.audit_events import FederationAudit, FederationTotals
from appliance.store.db import Database
from appliance.store.jobs import JobQueue
from tests.appliance.pipelineutil import node_parts, process_file


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, by name and sorted labels."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(collector: StoreCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    return samples(generate_latest(registry).decode())


def _sha(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def test_the_store_figures_are_read_at_each_scrape(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite3"
    inbox = tmp_path / "inbox"
    with JobQueue(db) as queue:
        done = queue.enqueue(inbox / "a.png", _sha(1), 1).job
        queue.claim(done.id)
        queue.mark_done(done.id, "m@1")
        queue.enqueue(inbox / "a-again.png", _sha(1), 1)  # a duplicate of job 1
        for i, code in enumerate(("not_an_image", "not_an_image", "too_costly"), start=2):
            job = queue.enqueue(inbox / f"{i}.png", _sha(i), 1).job
            queue.claim(job.id)
            queue.mark_rejected(job.id, code, "why")
        queued = queue.enqueue(inbox / "q.png", _sha(9), 1).job
        queue.claim(queued.id)
        queue.defer(queued.id, "disk space", 60.0)
    conn = Database(db)
    with conn.write() as c:
        for i, status in enumerate(("pending", "pending", "failed", "sent")):
            c.execute(
                "INSERT INTO outbound (job_id, kind, path, destination, status, created_at, "
                "updated_at) VALUES (?, 'seg', ?, 'PACS@h:104', ?, 'x', 'x')",
                (done.id, f"o{i}.dcm", status),
            )
    conn.close()
    collector = StoreCollector(db)
    got = scrape(collector)
    assert got[("fame_node_store_up", ())] == 1
    assert got[("fame_node_jobs", (("status", "done"),))] == 1
    assert got[("fame_node_jobs", (("status", "queued"),))] == 1
    assert got[("fame_node_jobs", (("status", "running"),))] == 0
    assert got[("fame_node_jobs_waiting", ())] == 1
    assert got[("fame_node_files_processed_total", ())] == 1
    assert got[("fame_node_files_rejected_total", (("error_code", "not_an_image"),))] == 2
    assert got[("fame_node_files_rejected_total", (("error_code", "too_costly"),))] == 1
    assert got[("fame_node_duplicates_total", ())] == 1
    assert got[("fame_node_dicom_objects", (("status", "pending"),))] == 2
    assert got[("fame_node_dicom_objects", (("status", "failed"),))] == 1
    assert got[("fame_node_dicom_objects_sent_total", ())] == 1
    # No federation round was recorded: no federation figure is made up.
    assert not any(name.startswith("fame_node_federation") for name, _ in got)
    # The next scrape sees what changed since.
    with FederationAudit(db) as fed:
        fed.record_round(
            federation="net",
            round_id=1,
            decision="joined",
            epsilon_spent=0.42,
            delta=1e-5,
            n_examples=40,
        )
        fed.record_round(
            federation="net",
            round_id=2,
            decision="joined",
            epsilon_spent=0.61,
            delta=1e-5,
            n_examples=40,
        )
    got = scrape(collector)
    assert got[("fame_node_federation_rounds_total", (("decision", "joined"),))] == 2
    assert got[("fame_node_federation_rounds_total", (("decision", "declined"),))] == 0
    assert got[("fame_node_federation_epsilon_spent", ())] == 0.61
    assert got[("fame_node_federation_delta", ())] == 1e-5
    collector.close()


def test_the_federation_hook_takes_another_source(tmp_path: Path) -> None:
    # A source issue 9 may register: here its figures come from its own table.
    db = tmp_path / "s.sqlite3"
    d = Database(db)
    with d.write() as c:
        c.execute("CREATE TABLE fed_rounds (round INTEGER, epsilon REAL)")
        c.executemany("INSERT INTO fed_rounds VALUES (?, ?)", [(1, 0.3), (2, 0.5), (3, 0.9)])
    d.close()

    def from_table(conn: object) -> FederationTotals:
        import sqlite3

        assert isinstance(conn, sqlite3.Connection)
        n, eps = conn.execute("SELECT COUNT(*), MAX(epsilon) FROM fed_rounds").fetchone()
        return FederationTotals(rounds_joined=n, rounds_declined=0, epsilon_spent=eps, delta=1e-6)

    got = scrape(StoreCollector(db, federation=from_table))
    assert got[("fame_node_federation_rounds_total", (("decision", "joined"),))] == 3
    assert got[("fame_node_federation_epsilon_spent", ())] == 0.9


def test_a_store_that_cannot_be_read_is_reported_not_raised(tmp_path: Path) -> None:
    got = scrape(StoreCollector(tmp_path / "missing-folder" / "s.sqlite3"))
    assert got == {("fame_node_store_up", ()): 0}


def test_label_values_are_codes_only() -> None:
    assert label_value("not_an_image") == "not_an_image"
    assert label_value("DOE^JANE.png") == "other" and label_value(None) == "none"


def test_health_blocks_on_intake_processing_store_or_stop() -> None:
    model = {"model": "m@1", "backend": "onnxruntime", "device": "cpu"}
    code, body = health_report([], running=True, store_up=True, model=model)
    assert (code, body["status"], body["model"]) == (200, "ok", "m@1")
    stuck = {"scope": "job 4", "condition": "its run past processing.job_timeout_s", "since": "t"}
    code, body = health_report([stuck], running=True, store_up=True, model=model)
    assert code == 200 and body["conditions"][0]["blocking"] is False
    disk = {"scope": "processing", "condition": "disk space in results", "since": "t"}
    code, body = health_report([disk, stuck], running=True, store_up=True, model=model)
    assert code == 503 and body["blocked_by"] == ["processing waits for disk space in results"]
    code, body = health_report([], running=False, store_up=False, model=model)
    assert code == 503
    assert body["blocked_by"] == ["the store cannot be read", "the node is stopping"]


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[NodeParts]:
    p = node_parts(tmp_path / "node", workers=1)
    yield p
    p.close()


def test_the_pipeline_observes_latencies_and_outcomes(parts: NodeParts, tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    write_phantom_png(good, make_phantom(PhantomSpec(seed=5)))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not an image")
    process_file(parts, good)
    process_file(parts, bad)
    got = samples(generate_latest(parts.pipeline.metrics.registry).decode())
    assert got[("fame_node_job_seconds_count", (("outcome", "done"),))] == 1
    assert got[("fame_node_job_seconds_count", (("outcome", "rejected"),))] == 1
    assert got[("fame_node_job_seconds_count", (("outcome", "failed"),))] == 0
    assert got[("fame_node_decode_seconds_count", ())] == 2  # both were decoded
    assert got[("fame_node_inference_seconds_count", ())] == 1  # only the image
    assert got[("fame_node_inference_seconds_sum", ())] > 0
    assert got[("fame_node_end_to_end_seconds_count", ())] == 1


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read(), r.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers["Content-Type"]


def test_the_endpoint_serves_metrics_and_health_over_http(parts: NodeParts, tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    write_phantom_png(good, make_phantom(PhantomSpec(seed=6)))
    process_file(parts, good)
    config = load_config(
        env={
            "FAME_NODE_PATHS__ROOT": str(tmp_path / "node"),
            "FAME_NODE_METRICS__ENABLED": "true",
            "FAME_NODE_METRICS__PORT": "0",
        }
    )
    stopping = threading.Event()
    endpoint = MetricsEndpoint(config, parts, stopping)
    endpoint.start()
    try:
        base = f"http://127.0.0.1:{endpoint.port}"
        code, body, ctype = _get(base + "/metrics")
        assert code == 200 and ctype.startswith("text/plain")
        got = samples(body.decode())
        assert got[("fame_node_files_processed_total", ())] == 1
        assert got[("fame_node_job_seconds_count", (("outcome", "done"),))] == 1
        info = [k for k in got if k[0] == "fame_node_model_info"]
        (key,) = info
        labels = dict(key[1])
        assert labels["model"] == parts.bundle.version_label
        assert labels["backend"] == parts.backend.name
        code, body, ctype = _get(base + "/healthz")
        assert (code, ctype) == (200, "application/json")
        assert json.loads(body)["status"] == "ok"
        parts.health.report("processing", "disk space in the results folder")
        code, body, _ = _get(base + "/healthz")
        assert code == 503 and json.loads(body)["status"] == "blocked"
        parts.health.ok("processing")
        stopping.set()
        assert _get(base + "/healthz")[0] == 503
        assert _get(base + "/nothing")[0] == 404
    finally:
        port = endpoint.port
        endpoint.stop()
    endpoint.stop()  # idempotent
    assert endpoint.port is None
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass  # nothing listens there any more


def test_a_port_in_use_is_a_config_error_that_says_what_to_change(
    parts: NodeParts, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = load_config(
            env={
                "FAME_NODE_PATHS__ROOT": str(tmp_path / "node"),
                "FAME_NODE_METRICS__ENABLED": "true",
                "FAME_NODE_METRICS__PORT": str(port),
            }
        )
        released: list[bool] = []
        endpoint = MetricsEndpoint(config, parts, threading.Event())
        with pytest.raises(ConfigError, match=f"metrics.port = {port} on 127.0.0.1"):
            endpoint.start(on_error=lambda: released.append(True))
        assert released == [True] and endpoint.port is None


def test_disabled_metrics_listen_nowhere(parts: NodeParts, tmp_path: Path) -> None:
    config = load_config(env={"FAME_NODE_PATHS__ROOT": str(tmp_path / "node")})
    endpoint = MetricsEndpoint(config, parts, threading.Event())
    endpoint.start()
    assert endpoint.port is None
    endpoint.stop()


def test_federation_figures_are_the_privacy_ledgers(tmp_path: Path) -> None:
    """The rounds and epsilon served are what the federation's ledger (Opacus accountant)
    recorded: the real figures, through the audit rows it writes with each round."""
    pytest.importorskip("opacus")
    from appliance.federation.ledger import PrivacyLedger

    db = tmp_path / "s.sqlite3"
    with PrivacyLedger(db) as ledger:
        first = ledger.record_round("run-a", 1, "example", 1.1, 0.02, 50, 1e-5, 120)
        ledger.record_declined("run-a", 2, 1e-5)
        spent = ledger.record_round("run-a", 3, "example", 1.1, 0.02, 50, 1e-5, 130)
    assert spent > first > 0
    got = scrape(StoreCollector(db))
    assert got[("fame_node_federation_rounds_total", (("decision", "joined"),))] == 2
    assert got[("fame_node_federation_rounds_total", (("decision", "declined"),))] == 1
    assert got[("fame_node_federation_epsilon_spent", ())] == pytest.approx(spent)
    assert got[("fame_node_federation_delta", ())] == 1e-5
