"""The parts of a node, built from its config: store, pipeline, intake, registry, decoder.

`build_parts` is the one place that constructs them (for the service, `fame-node process`
and the tests); `appliance.service.Node` runs them. Building verifies the active model and
starts its backend, so a node that cannot run fails here, before it takes any file.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from appliance.analysis import Analyzer
from appliance.bundle import Bundle
from appliance.config import NodeConfig
from appliance.errors import BundleError
from appliance.federation.training_spool import CASES_FOLDER
from appliance.health import Conditions
from appliance.ingest.intake import Intake
from appliance.ingest.snapshot import Spool
from appliance.io.sandbox import Decoder
from appliance.io.types import ReadLimits
from appliance.models.registry import ActiveModel, ModelRegistry
from appliance.pipeline import Pipeline, PipelineSettings
from appliance.privacy import Pseudonymizer
from appliance.runtime import InferenceBackend, create_backend
from appliance.store.jobs import JobQueue
from appliance.store.results import ResultStore

log = logging.getLogger("fame_node.service")


@dataclass
class NodeParts:
    queue: JobQueue
    results: ResultStore
    pipeline: Pipeline
    intake: Intake
    registry: ModelRegistry
    health: Conditions
    decoder: Decoder

    def close(self) -> None:
        """Stop the decoder processes and close the store (after the workers stopped)."""
        self.decoder.close()
        self.queue.close()
        self.results.close()

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


def read_limits(config: NodeConfig) -> ReadLimits:
    """What one input may cost to read, from the config."""
    p = config.processing
    return ReadLimits(
        max_frames=p.max_frames,
        max_pixels=p.max_image_pixels,
        max_bytes=config.ingest.max_input_bytes,
        min_side=p.min_image_side,
        max_jpeg_scans=p.max_jpeg_scans,
    )


def build_decoder(config: NodeConfig, workers: int | None = None) -> Decoder:
    """The sandboxed decoder the pipeline reads inputs with: one child process per worker,
    each bounded in time and memory (`appliance.io.sandbox`)."""
    p = config.processing
    return Decoder(
        workers or p.worker_count(),
        read_limits(config),
        timeout_s=p.decode_timeout_s,
        memory_mb=p.decode_memory_mb,
    )


def build_parts(
    config: NodeConfig, *, workers: int | None = None, stop: threading.Event | None = None
) -> NodeParts:
    """Create folders, open the store, verify the active model and start its backend.

    `workers`: how many threads will process jobs (default: the service's worker count);
    1 for a caller that processes files one after another, whose inference then has every
    CPU to itself. `stop`: set when the caller stops (ends retries of passing faults)."""
    for name in ("inbox", "work", "results", "quarantine", "outbox", "models"):
        config.folder(name).mkdir(parents=True, exist_ok=True)
    queue = JobQueue(config.database_path)
    results = ResultStore(config.database_path)
    pseudonym = Pseudonymizer.from_dir(config.folder("work"))
    registry = ModelRegistry(config)
    analyzer = build_analyzer(config, load_active(registry, registry.active()), workers)
    health = Conditions()
    spool = Spool(config.folder("work") / "spool")
    decoder = build_decoder(config, workers)
    p, ing = config.processing, config.ingest
    pipeline = Pipeline(
        PipelineSettings(
            results_dir=config.folder("results"),
            quarantine_dir=config.folder("quarantine"),
            copy_rejected=p.copy_rejected_to_quarantine,
            quarantine_max_file_bytes=p.quarantine_max_file_bytes,
            quarantine_max_bytes=p.quarantine_max_bytes,
            retry_initial_s=ing.retry_initial_s,
            retry_max_s=ing.retry_max_s,
            outbox_dir=config.folder("outbox") if config.dicom_out.enabled else None,
            device_serial=config.dicom_out.device_serial or config.node_name,
            send_destination=config.dicom_send.queued_for(),
            training_copies=(
                config.folder("work") / CASES_FOLDER if config.federation.enabled else None
            ),
        ),
        analyzer,
        queue,
        results,
        pseudonym,
        decode=lambda path, suffix: decoder.decode(path, claimed_suffix=suffix),
        spool=spool,
        health=health,
        wait=(stop or threading.Event()).wait,
    )
    intake = Intake(
        queue,
        spool,
        inbox=config.folder("inbox"),
        max_bytes=ing.max_input_bytes,
        label=lambda p: pseudonym(p.name, "file"),
    )
    return NodeParts(queue, results, pipeline, intake, registry, health, decoder)
