"""The node's small HTTP endpoint: ``/metrics`` for Prometheus, ``/healthz`` for a probe.

`MetricsEndpoint` is started and stopped by the service (`appliance.service.Node`) when
``metrics.enabled``; it listens on ``metrics.bind_address`` (127.0.0.1 unless configured)
and ``metrics.port``, on a thread of its own (one short-lived thread per request).

``GET /metrics``: `appliance.metrics` in the Prometheus text format, from the pipeline's
own registry plus what is read from the store at the scrape.

``GET /healthz``: JSON of the node's health: whether it is running, the model and backend,
and the conditions it waits out (`appliance.health.Conditions`). 200 when healthy; 503
when something blocks it: the node is stopping, the store cannot be read, or intake or
processing waits for a passing fault (a full disk, a locked database). A job past its
time limit is listed but does not block: the watchdog put another worker in its place.

Nothing here names a file or a patient; the endpoint only reads.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from appliance import __version__
from appliance.config import NodeConfig
from appliance.errors import ConfigError
from appliance.health import Conditions
from appliance.metrics import ModelInfoCollector, StoreCollector
from appliance.pipeline import Pipeline

log = logging.getLogger("fame_node.metrics")

BLOCKING_SCOPES = ("intake", "processing")
REQUEST_TIMEOUT_S = 10.0


class NodeView(Protocol):
    """What the endpoint reads of the running node (`appliance.service.NodeParts`)."""

    @property
    def pipeline(self) -> Pipeline: ...
    @property
    def health(self) -> Conditions: ...


def health_report(
    conditions: list[dict[str, str]], *, running: bool, store_up: bool, model: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body of ``/healthz`` (a pure function of what it is given)."""
    listed = [{**c, "blocking": c["scope"] in BLOCKING_SCOPES} for c in conditions]
    blocked_by = [f"{c['scope']} waits for {c['condition']}" for c in listed if c["blocking"]]
    if not store_up:
        blocked_by.append("the store cannot be read")
    if not running:
        blocked_by.append("the node is stopping")
    body = {
        "status": "blocked" if blocked_by else "ok",
        "blocked_by": blocked_by,
        "conditions": listed,
        "version": __version__,
        **model,
    }
    return (503 if blocked_by else 200), body


class MetricsEndpoint:
    """The HTTP endpoint of one node; `start` does nothing when metrics are disabled."""

    def __init__(self, config: NodeConfig, node: NodeView, stopping: threading.Event) -> None:
        self._config = config
        self._node = node
        self._stopping = stopping
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.store = StoreCollector(config.database_path)
        self._collectors: list[StoreCollector | ModelInfoCollector] = []

    @property
    def port(self) -> int | None:
        """The port listened on (the one chosen when ``metrics.port = 0``); None: off."""
        return None if self._server is None else int(self._server.server_address[1])

    def start(self, *, on_error: Callable[[], None] = lambda: None) -> None:
        """Listen, if ``metrics.enabled``.

        Raises:
            ConfigError: the port cannot be bound (`on_error` ran first: the caller's
                clean-up, e.g. releasing the node's lock).
        """
        cfg = self._config.metrics
        if not cfg.enabled or self._server is not None:
            return
        try:
            server = ThreadingHTTPServer((cfg.bind_address, cfg.port), _handler(self))
        except OSError as exc:  # taken, or not an address of this machine
            on_error()
            raise ConfigError(
                [
                    f"metrics.port = {cfg.port} on {cfg.bind_address} cannot be bound "
                    f"({exc.strerror or exc}): another program listens there, or the address "
                    "is not this machine's; choose another metrics.port (or "
                    "metrics.bind_address), or set metrics.enabled = false"
                ]
            ) from exc
        server.daemon_threads = True
        registry = self._node.pipeline.metrics.registry
        self._collectors = [self.store, ModelInfoCollector(self.model_labels)]
        for collector in self._collectors:
            registry.register(collector)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="fame-metrics"
        )
        self._thread.daemon = True
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics, health on /healthz", cfg.bind_address, self.port)

    def stop(self) -> None:
        """Stop listening and close the store connection. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5.0)
        registry = self._node.pipeline.metrics.registry
        for collector in self._collectors:
            registry.unregister(collector)
        self._collectors = []
        self.store.close()
        log.info("metrics endpoint stopped")

    # -- what is served --------------------------------------------------------------------
    def model_labels(self) -> dict[str, str]:
        analyzer = self._node.pipeline.analyzer
        return {
            "model": analyzer.bundle.version_label,
            "backend": analyzer.backend.name,
            "device": analyzer.backend.device,
        }

    def metrics_text(self) -> bytes:
        return generate_latest(self._node.pipeline.metrics.registry)

    def health(self) -> tuple[int, dict[str, Any]]:
        return health_report(
            self._node.health.snapshot(),
            running=not self._stopping.is_set(),
            store_up=self._store_readable(),
            model=self.model_labels(),
        )

    def _store_readable(self) -> bool:
        up = next(iter(self.store.collect()))
        return bool(up.samples and up.samples[0].value == 1)


def _handler(endpoint: MetricsEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT_S  # a client that sends nothing does not hold a thread
        server_version = "fame-node"
        sys_version = ""

        def do_GET(self) -> None:
            route = self.path.split("?", 1)[0]
            try:
                if route == "/metrics":
                    self._send(200, endpoint.metrics_text(), CONTENT_TYPE_LATEST)
                elif route == "/healthz":
                    code, body = endpoint.health()
                    self._send(code, json.dumps(body).encode(), "application/json")
                else:
                    self._send(404, b"not found: try /metrics or /healthz\n", "text/plain")
            except Exception:  # a failed scrape must never stop the endpoint
                log.exception("metrics endpoint: %s failed", route[:40])
                self._send(500, b"internal error; see the node log\n", "text/plain")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("metrics endpoint: " + format, *args)

    return Handler
