"""The node service: watcher -> durable queue -> worker threads -> results.

`Node` wires the parts together (the one place that does) and runs them: an
`InboxWatcher` feeds `Intake`, which hashes files into the SQLite job queue; worker
threads claim jobs and hand them to the `Pipeline`. At start, jobs left running by a
crash are requeued. `stop()` lets workers finish the job in hand, then returns; a job cut
off by SIGKILL is retried at the next start. A status file in ``work/`` tells
`fame-node status` what the running service uses.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.analysis import Analyzer
from appliance.bundle import Bundle, load_bundle
from appliance.config import NodeConfig
from appliance.ingest.intake import Intake
from appliance.ingest.watcher import InboxWatcher
from appliance.pipeline import Pipeline, PipelineSettings
from appliance.privacy import Pseudonymizer
from appliance.runtime import InferenceBackend, create_backend
from appliance.store.jobs import JobQueue
from appliance.store.results import ResultStore

log = logging.getLogger("fame_node.service")

STATUS_FILE = "service-status.json"
HEARTBEAT_S = 5.0


@dataclass
class NodeParts:
    queue: JobQueue
    results: ResultStore
    bundle: Bundle
    backend: InferenceBackend
    pipeline: Pipeline
    intake: Intake


def build_parts(config: NodeConfig) -> NodeParts:
    """Create folders, open the store, verify the bundle and start the backend."""
    for name in ("inbox", "work", "results", "quarantine", "outbox", "models"):
        config.folder(name).mkdir(parents=True, exist_ok=True)
    queue = JobQueue(config.database_path)
    results = ResultStore(config.database_path)
    pseudonym = Pseudonymizer.from_dir(config.folder("work"))
    bundle = load_bundle(config.models.bundle)
    backend = create_backend(bundle, config.runtime)
    analyzer = Analyzer(bundle, backend, config.thresholds, config.runtime.batch_size)
    pipeline = Pipeline(
        PipelineSettings(
            results_dir=config.folder("results"),
            quarantine_dir=config.folder("quarantine"),
            max_frames=config.processing.max_frames,
            max_image_pixels=config.processing.max_image_pixels,
            copy_rejected=config.processing.copy_rejected_to_quarantine,
        ),
        analyzer,
        queue,
        results,
        pseudonym,
    )
    intake = Intake(queue, label=lambda p: pseudonym(p.name, "file"))
    return NodeParts(queue, results, bundle, backend, pipeline, intake)


class Node:
    """The running service. `start()` returns at once; `stop()` shuts down cleanly."""

    def __init__(self, config: NodeConfig, parts: NodeParts | None = None) -> None:
        self.config = config
        self.parts = parts or build_parts(config)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._workers: list[threading.Thread] = []
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._watcher: InboxWatcher | None = None
        self._heartbeat: threading.Thread | None = None
        self.started_at = datetime.now(UTC)

    # -- lifecycle ---------------------------------------------------------------------
    def start(self, *, watch: bool = True) -> None:
        recovered = self.parts.queue.recover_interrupted(self.config.ingest.max_attempts)
        if recovered:
            log.warning("recovered %d job(s) interrupted by an earlier stop", len(recovered))
        for i in range(self.config.processing.workers):
            t = threading.Thread(target=self._work, name=f"fame-worker-{i}", daemon=True)
            t.start()
            self._workers.append(t)
        if watch:
            self._watcher = InboxWatcher(
                self.config.folder("inbox"),
                self._on_candidate,
                rescan_interval_s=self.config.ingest.rescan_interval_s,
                settle_s=self.config.ingest.settle_s,
            )
            self._watcher.start()
        self._heartbeat = threading.Thread(target=self._beat, name="fame-status", daemon=True)
        self._heartbeat.start()
        log.info(
            "node %s started: model %s on %s/%s, %d worker(s), inbox %s",
            self.config.node_name,
            self.parts.bundle.version_label,
            self.parts.backend.name,
            self.parts.backend.device,
            len(self._workers),
            self.config.folder("inbox"),
        )

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._watcher is not None:
            self._watcher.stop()
        deadline = time.monotonic() + timeout
        for t in self._workers:
            t.join(max(0.0, deadline - time.monotonic()))
        if self._heartbeat is not None:
            self._heartbeat.join(2.0)
        self._write_status(running=False)
        log.info("node stopped")

    def wait_stopped(self) -> None:
        self._stop.wait()

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def idle(self) -> bool:
        counts = self.parts.queue.counts()
        with self._busy_lock:
            busy = self._busy
        return counts.get("queued", 0) == 0 and counts.get("running", 0) == 0 and busy == 0

    # -- work --------------------------------------------------------------------------
    def submit(self, path: Path) -> None:
        self._on_candidate(path)

    def _on_candidate(self, path: Path) -> None:
        self.parts.intake.submit(path)
        self._wake.set()

    def _work(self) -> None:
        while not self._stop.is_set():
            with self._busy_lock:
                self._busy += 1
            try:
                job = self.parts.queue.claim_next()
                if job is not None:
                    self.parts.pipeline.process(job)
            except Exception:
                # The store itself failed (disk full, database locked for too long). Keep
                # the worker alive; an interrupted job is recovered at the next start.
                log.exception("worker error; retrying in 5 s")
                self._stop.wait(5.0)
                job = None
            finally:
                with self._busy_lock:
                    self._busy -= 1
            if job is None:
                self._wake.wait(1.0)
                self._wake.clear()

    # -- status ------------------------------------------------------------------------
    def _beat(self) -> None:
        while not self._stop.is_set():
            self._write_status(running=True)
            self._stop.wait(HEARTBEAT_S)

    def _write_status(self, *, running: bool) -> None:
        data: dict[str, Any] = {
            "node_name": self.config.node_name,
            "pid": os.getpid(),
            "running": running,
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "heartbeat_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "model": self.parts.bundle.version_label,
            "backend": self.parts.backend.name,
            "provider": self.parts.backend.device,
            "workers": len(self._workers),
        }
        path = self.config.folder("work") / STATUS_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot write %s: %s", path, exc.strerror)


def read_service_status(config: NodeConfig) -> dict[str, Any] | None:
    """The running service's status file, with `alive` added; None if there is none."""
    path = config.folder("work") / STATUS_FILE
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    beat = datetime.fromisoformat(data["heartbeat_at"])
    fresh = (datetime.now(UTC) - beat).total_seconds() < 3 * HEARTBEAT_S
    data["alive"] = bool(data.get("running")) and fresh and _pid_alive(int(data["pid"]))
    return data


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
