"""The node service: watcher -> durable queue -> worker threads -> results.

`Node` wires the parts together (the one place that does) and runs them: an
`InboxWatcher` feeds `Intake`, which hashes files into the SQLite job queue; worker
threads claim jobs and hand them to the `Pipeline`. At start, jobs left running by a
crash are requeued. `stop()` lets workers finish the job in hand, then returns; a job cut
off by SIGKILL is retried at the next start. A status file in ``work/`` tells
`fame-node status` what the running service uses.

Models are swapped live. The active model is whatever the model history in the database
says (`ModelRegistry`); a thread polls it every ``models.poll_interval_s``. When another
model becomes active (``fame-node models activate`` / ``rollback``, the GUI), that thread
loads and verifies the bundle and opens its inference session while the workers go on with
the old one, then swaps the finished `Analyzer` into the pipeline with one assignment. Each
job uses the analyzer it took when it started, so none fails, none is lost, and each
result names the model that made it. A bundle that cannot be loaded is recorded as
``refused`` and the node goes back to (keeps) the model it runs.
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
from appliance.bundle import Bundle
from appliance.config import NodeConfig
from appliance.errors import BundleError
from appliance.ingest.intake import Intake
from appliance.ingest.watcher import InboxWatcher
from appliance.models.registry import ActiveModel, ModelRegistry
from appliance.pipeline import Pipeline, PipelineSettings
from appliance.privacy import Pseudonymizer
from appliance.runtime import InferenceBackend, create_backend
from appliance.runtime.factory import describe_sharing
from appliance.store.jobs import JobQueue
from appliance.store.results import ResultStore

log = logging.getLogger("fame_node.service")

STATUS_FILE = "service-status.json"
HEARTBEAT_S = 5.0


@dataclass
class NodeParts:
    queue: JobQueue
    results: ResultStore
    pipeline: Pipeline
    intake: Intake
    registry: ModelRegistry

    @property
    def bundle(self) -> Bundle:
        """The bundle new jobs run on (it changes when a model is activated)."""
        return self.pipeline.analyzer.bundle

    @property
    def backend(self) -> InferenceBackend:
        return self.pipeline.analyzer.backend


def build_analyzer(config: NodeConfig, bundle: Bundle, workers: int | None = None) -> Analyzer:
    """Open the inference session for a verified bundle, to be shared by `workers` threads
    (default: the service's worker count)."""
    workers = workers or config.processing.worker_count()
    backend = create_backend(bundle, config.runtime, workers=workers)
    return Analyzer(bundle, backend, config.thresholds, config.runtime.batch_size)


def load_active(registry: ModelRegistry, active: ActiveModel) -> Bundle:
    """Verify the active model for a start; the error says how to get going again."""
    try:
        return registry.load(active.path)
    except BundleError as exc:
        hint = (
            " Activate another model (`fame-node models activate NAME@VERSION`) or roll back "
            "(`fame-node models rollback`)."
            if active.event is not None
            else ""  # the initial bundle: the error already names models.bundle
        )
        raise BundleError(f"cannot start on the active model {active.label}: {exc}{hint}") from exc


def build_parts(config: NodeConfig, *, workers: int | None = None) -> NodeParts:
    """Create folders, open the store, verify the active model and start its backend.

    `workers`: how many threads will process jobs (default: the service's worker count);
    1 for a caller that processes files one after another, whose inference then has every
    CPU to itself."""
    for name in ("inbox", "work", "results", "quarantine", "outbox", "models"):
        config.folder(name).mkdir(parents=True, exist_ok=True)
    queue = JobQueue(config.database_path)
    results = ResultStore(config.database_path)
    pseudonym = Pseudonymizer.from_dir(config.folder("work"))
    registry = ModelRegistry(config)
    analyzer = build_analyzer(config, load_active(registry, registry.active()), workers)
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
    return NodeParts(queue, results, pipeline, intake, registry)


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
        self._model_watch: threading.Thread | None = None
        self._model_seen: int | None = None  # newest model event already acted on
        self.started_at = datetime.now(UTC)
        self.model_since = self.started_at
        self._status_lock = threading.Lock()  # the heartbeat and a model swap both write

    # -- lifecycle ---------------------------------------------------------------------
    def start(self, *, watch: bool = True) -> None:
        recovered = self.parts.queue.recover_interrupted(self.config.ingest.max_attempts)
        if recovered:
            log.warning("recovered %d job(s) interrupted by an earlier stop", len(recovered))
        for i in range(self.config.processing.worker_count()):
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
        self.parts.registry.ensure_initial()
        self._model_watch = threading.Thread(
            target=self._watch_models, name="fame-models", daemon=True
        )
        self._model_watch.start()
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
        if self._model_watch is not None:
            self._model_watch.join(max(2.0, deadline - time.monotonic()))
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

    # -- models ------------------------------------------------------------------------
    def _watch_models(self) -> None:
        while not self._stop.wait(self.config.models.poll_interval_s):
            try:
                self.check_model()
            except Exception:
                # The database was busy or gone for a moment: try again at the next poll.
                log.exception("could not check the model history")

    def check_model(self) -> bool:
        """Load and swap in the active model if it changed; True when a swap happened.

        Runs on the model thread (tests call it directly). The new analyzer is built
        completely before the swap; until then, and if building fails, the workers go on
        with the current one.
        """
        registry = self.parts.registry
        newest = registry.last_event_id()
        if newest == self._model_seen:
            return False
        self._model_seen = newest
        target = registry.active()
        running = self.parts.pipeline.analyzer.bundle
        if (target.label, target.path) == (running.version_label, running.path.resolve()):
            return False
        log.info("model %s activated; loading it (running %s)", target.label, running.version_label)
        try:
            bundle = registry.load(target.path)
            if bundle.version_label != target.label:
                raise BundleError(
                    f"{target.path} now holds {bundle.version_label}, not {target.label}"
                )
            analyzer = build_analyzer(self.config, bundle)
        except Exception as exc:  # whatever breaks the new model, the running one stays
            reason = f"the service could not load it: {exc}"
            log.error("model %s refused, keeping %s: %s", target.label, running.version_label, exc)
            registry.refuse_loading(target, reason, running)
            self._model_seen = registry.last_event_id()
            return False
        previous = self.parts.pipeline.swap_analyzer(analyzer)
        self.model_since = datetime.now(UTC)
        self._write_status(running=True)
        log.info(
            "model swapped: %s -> %s on %s/%s",
            previous.bundle.version_label,
            bundle.version_label,
            analyzer.backend.name,
            analyzer.backend.device,
        )
        return True

    # -- status ------------------------------------------------------------------------
    def _beat(self) -> None:
        while not self._stop.is_set():
            self._write_status(running=True)
            self._stop.wait(HEARTBEAT_S)

    def _write_status(self, *, running: bool) -> None:
        analyzer = self.parts.pipeline.analyzer
        data: dict[str, Any] = {
            "node_name": self.config.node_name,
            "pid": os.getpid(),
            "running": running,
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "heartbeat_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "model": analyzer.bundle.version_label,
            "model_path": str(analyzer.bundle.path),
            "model_since": self.model_since.isoformat(timespec="microseconds"),
            "backend": analyzer.backend.name,
            "provider": analyzer.backend.device,
            "backend_skipped": [str(s) for s in getattr(analyzer.backend, "skipped", ())],
            "workers": len(self._workers),
            "sharing": describe_sharing(analyzer.backend, len(self._workers)),
        }
        path = self.config.folder("work") / STATUS_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        with self._status_lock:
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
