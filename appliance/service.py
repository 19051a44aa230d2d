"""The node service: watcher -> durable queue -> worker threads -> results.

`Node` wires the parts together (the one place that does) and runs them: an
`InboxWatcher` feeds `Intake`, which copies files into the spool and hashes them into the
SQLite job queue; worker threads claim jobs and hand them to the `Pipeline`. One service
per store: `start()` takes the store's lock (`appliance.nodelock`) and only then requeues
the jobs a crashed run left running. `stop()` lets workers finish the job in hand for up to
its timeout, then puts the jobs still unfinished back in the queue (not counted as an
attempt) and returns; a job cut off by SIGKILL is retried at the next start. A status file
in ``work/`` tells `fame-node status` what the running service uses and what it waits for.

A watchdog reports a job running past ``processing.job_timeout_s`` and starts another
worker in its place, so one input never holds the node's capacity (decoding, where a
runaway can happen, already runs in a killable child process with its own time limit).

Models are swapped live. The active model is whatever the model history in the database
says (`ModelRegistry`); a thread polls it every ``models.poll_interval_s``. When another
model becomes active (``fame-node models activate`` / ``rollback``, the GUI), that thread
loads and verifies the bundle and opens its inference session while the workers go on with
the old one, then swaps the finished `Analyzer` into the pipeline with one assignment. Each
job uses the analyzer it took when it started, so none fails, none is lost, and each
result names the model that made it. A bundle that cannot be loaded is ``refused``; the
node keeps the model it runs.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.config import NodeConfig
from appliance.dicom_send.sender import DicomSender, start_sender
from appliance.errors import BundleError, ConfigError, TransientError
from appliance.federation.supervisor import SupernodeSupervisor, start_federation
from appliance.ingest.dicom_receiver import DicomReceiver
from appliance.ingest.snapshot import FileStillChangingError
from appliance.ingest.watcher import InboxWatcher
from appliance.metrics_http import MetricsEndpoint
from appliance.node_parts import (
    NodeParts,
    build_analyzer,
    build_decoder,
    build_parts,
    read_limits,
)
from appliance.nodelock import NodeLock
from appliance.runtime.factory import describe_sharing
from appliance.service_status import HEARTBEAT_S, STATUS_FILE
from appliance.store.db import StoreError

log = logging.getLogger("fame_node.service")

__all__ = ["Node", "NodeParts", "build_analyzer", "build_decoder", "build_parts", "read_limits"]


class Node:
    """The running service. `start()` returns at once; `stop()` shuts down cleanly."""

    def __init__(self, config: NodeConfig, parts: NodeParts | None = None) -> None:
        self.config = config
        self._stop = threading.Event()
        self.parts = parts or build_parts(config, stop=self._stop)
        self._wake = threading.Event()
        self._workers: list[threading.Thread] = []
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._lock = NodeLock(config.database_path)
        self._metrics = MetricsEndpoint(config, self.parts, self._stop)  # /metrics, /healthz
        # What each worker holds: thread name -> (job id, monotonic start). A worker the
        # watchdog replaced is in `_retired`: it ends after its job.
        self._holding: dict[str, tuple[int, float]] = {}
        self._retired: set[str] = set()
        self._stuck_jobs: set[int] = set()
        self._watchdog: threading.Thread | None = None
        self._watcher: InboxWatcher | None = None
        self._receiver: DicomReceiver | None = None
        self._sender: DicomSender | None = None
        self._federation: SupernodeSupervisor | None = None
        self._heartbeat: threading.Thread | None = None
        self._model_watch: threading.Thread | None = None
        self._model_seen: int | None = None  # newest model event already acted on
        self.started_at = datetime.now(UTC)
        self.model_since = self.started_at
        self._status_lock = threading.Lock()  # the heartbeat and a model swap both write

    # -- lifecycle ---------------------------------------------------------------------
    def start(self, *, watch: bool = True) -> None:
        """Take the store's lock, recover, start workers, watcher and watchdog.

        Raises:
            NodeLockedError: another service runs on this store (nothing was changed).
            ConfigError: the DICOM receiver's or the metrics port cannot be bound (stopped).
        """
        self._lock.acquire()
        self._metrics.start(on_error=self._lock.release)  # ConfigError: its port is taken
        recovered = self.parts.queue.recover_interrupted(self.config.ingest.max_attempts)
        if recovered:
            log.warning("recovered %d job(s) interrupted by an earlier stop", len(recovered))
        for _ in range(self.config.processing.worker_count()):
            self._start_worker()
        if watch:
            self._watcher = InboxWatcher(
                self.config.folder("inbox"),
                self._on_candidate,
                rescan_interval_s=self.config.ingest.rescan_interval_s,
                settle_s=self.config.ingest.settle_s,
                close_settle_s=self.config.ingest.close_settle_s,
            )
            self._watcher.start()
        if watch and self.config.dicom_net.enabled:  # after the watcher: it takes them
            self._receiver = DicomReceiver(
                self.config.dicom_net,
                self.config.folder("inbox"),
                max_bytes=self.config.ingest.max_input_bytes,
            )
            try:
                self._receiver.start()
            except OSError as exc:  # the port is taken, or the address is not this host's
                self._receiver = None
                self.stop(timeout=10.0)
                net = self.config.dicom_net
                raise ConfigError(
                    [
                        f"dicom_net.port = {net.port} on {net.bind_address} cannot be bound "
                        f"({exc.strerror or exc}): another program listens there, or the "
                        "address is not this machine's; choose another port or stop it"
                    ]
                ) from exc
        self._sender = start_sender(self.config)  # None unless dicom_send.enabled
        self._federation = start_federation(self.config)  # None unless federation.enabled
        self._watchdog = threading.Thread(
            target=self._watch_jobs, name="fame-watchdog", daemon=True
        )
        self._watchdog.start()
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

    def stop(self, timeout: float = 60.0) -> bool:
        """Stop; True when every worker ended, False when some were still in a job after
        `timeout` (those jobs are back in the queue; the caller should exit the process)."""
        self._stop.set()
        self._wake.set()
        if self._receiver is not None:  # before the watcher: nothing stored goes untaken
            self._receiver.stop()
        if self._sender is not None:  # after the object in hand; the rest stays queued
            self._sender.stop()
        if self._federation is not None:  # the SuperNode and its training, first
            self._federation.stop()
        if self._watcher is not None:
            self._watcher.stop()
        deadline = time.monotonic() + timeout
        for t in list(self._workers):
            t.join(max(0.0, deadline - time.monotonic()))
        with self._busy_lock:
            unfinished = sorted({job_id for job_id, _ in self._holding.values()})
        if unfinished:
            try:
                back = self.parts.queue.requeue(unfinished)
                log.warning(
                    "stopping with %d job(s) unfinished after %g s; back in the queue: %s",
                    len(back),
                    timeout,
                    ", ".join(str(j.id) for j in back) or "none",
                )
            except Exception:
                log.exception("could not put unfinished jobs back; the next start does")
        if self._heartbeat is not None:
            self._heartbeat.join(2.0)
        if self._model_watch is not None:
            self._model_watch.join(max(2.0, deadline - time.monotonic()))
        if self._watchdog is not None:
            self._watchdog.join(2.0)
        self._metrics.stop()
        self._write_status(running=False)
        self._lock.release()
        if not unfinished:
            self.parts.decoder.close()  # a worker still in a job may still be using it
        log.info("node stopped")
        return not unfinished

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
        try:
            self.parts.intake.submit(path)
        except FileStillChangingError:
            raise  # the file's own state, not the node's: the watcher offers it again
        except TransientError as exc:
            self.parts.health.report("intake", exc.condition)
            raise
        except StoreError as exc:
            if not exc.transient:
                raise
            # The database locked past its timeout or its disk full: wait, say so, and let
            # the watcher offer the file again (one warning line, not a traceback).
            condition = "the database (locked by another process, or its disk full)"
            self.parts.health.report("intake", condition)
            raise TransientError(str(exc), condition=condition, retry_after_s=5.0) from exc
        self.parts.health.ok("intake")
        self._wake.set()

    def _start_worker(self) -> None:
        n = len(self._workers)
        t = threading.Thread(target=self._work, name=f"fame-worker-{n}", daemon=True)
        self._workers.append(t)
        t.start()

    def _work(self) -> None:
        me = threading.current_thread().name
        while not self._stop.is_set() and me not in self._retired:
            with self._busy_lock:
                self._busy += 1
            job = None
            try:
                job = self.parts.queue.claim_next()
                if job is not None:
                    with self._busy_lock:
                        self._holding[me] = (job.id, time.monotonic())
                    self.parts.pipeline.process(job)
            except Exception as exc:
                # The store itself failed (database locked past its timeout, disk full):
                # keep the worker alive and try again; the job in hand, if any, is left
                # running and put back in the queue at stop or at the next start.
                transient = isinstance(exc, StoreError) and exc.transient
                if transient:
                    self.parts.health.report("processing", "the database (locked or full)")
                    log.warning("worker: the database is unavailable (%s); retrying in 5 s", exc)
                else:
                    log.exception("worker error; retrying in 5 s")
                self._stop.wait(5.0)
            finally:
                with self._busy_lock:
                    self._busy -= 1
                    self._holding.pop(me, None)
                    late = job is not None and job.id in self._stuck_jobs
                    if late and job is not None:
                        self._stuck_jobs.discard(job.id)
                if late and job is not None:
                    self.parts.health.ok(f"job {job.id}")
            if job is None:
                self._wake.wait(self._idle_wait())
                self._wake.clear()

    def _idle_wait(self) -> float:
        """Seconds until the next queued job is due (at most 1 s: new files wake us)."""
        try:
            due = self.parts.queue.next_due()
        except StoreError:
            return 1.0
        if due is None:
            return 1.0
        return min(1.0, max(0.05, (due - datetime.now(UTC)).total_seconds()))

    # -- watchdog ----------------------------------------------------------------------
    def _watch_jobs(self) -> None:
        limit = self.config.processing.job_timeout_s
        while not self._stop.wait(1.0):
            now = time.monotonic()
            with self._busy_lock:
                late = [
                    (name, job_id, now - since)
                    for name, (job_id, since) in self._holding.items()
                    if now - since > limit and job_id not in self._stuck_jobs
                ]
                for name, job_id, _ in late:
                    self._stuck_jobs.add(job_id)
                    self._retired.add(name)
            for _name, job_id, age in late:
                log.error(
                    "job %d has run for %.0f s, past processing.job_timeout_s = %g s; another "
                    "worker takes over the queue meanwhile",
                    job_id,
                    age,
                    limit,
                )
                self.parts.health.report(f"job {job_id}", "its run past processing.job_timeout_s")
                self._start_worker()

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
            "workers": self.config.processing.worker_count(),
            "sharing": describe_sharing(analyzer.backend, self.config.processing.worker_count()),
            "waiting_for": self.parts.health.snapshot(),
        }
        path = self.config.folder("work") / STATUS_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        with self._status_lock:
            try:
                tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
                os.replace(tmp, path)
            except OSError as exc:
                log.warning("cannot write %s: %s", path, exc.strerror)
