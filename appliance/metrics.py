"""The node's Prometheus metrics, on a `CollectorRegistry` of its own (never the global one).

Two kinds, both on `NodeMetrics.registry`:

* observed by the pipeline as jobs run (this process, since it started)::

    fame_node_decode_seconds            decoding one input in the sandbox
    fame_node_inference_seconds         one job's frames through the model (preprocessing
                                        and postprocessing included)
    fame_node_job_seconds{outcome}      claim to outcome: done, rejected, duplicate,
                                        failed, deferred (a passing fault)
    fame_node_end_to_end_seconds        queued to done (waits for a passing fault included)

* read from the store at each scrape (`StoreCollector`: the whole node, across restarts)::

    fame_node_store_up                              1 when the store could be read
    fame_node_jobs{status}                          queue depth by status
    fame_node_jobs_waiting                          queued jobs waiting out a passing fault
    fame_node_files_processed_total                 jobs done
    fame_node_files_rejected_total{error_code}      jobs rejected, by reason
    fame_node_duplicates_total                      files recorded as duplicates
    fame_node_dicom_objects{status}                 DICOM SEG / SR in the send queue
                                                    (pending, failed)
    fame_node_dicom_objects_sent_total              ... sent to the PACS
    fame_node_federation_rounds_total{decision}     federation rounds joined / declined
    fame_node_federation_epsilon_spent              cumulative epsilon, at
    fame_node_federation_delta                      this delta (only once a round ran)

* and `fame_node_model_info{model, backend, device}`: what new jobs run on (it follows a
  live model swap).

Labels are fixed vocabularies (statuses, outcomes, the input error codes), never a file
name, a path or anything read from a file. Federation figures come from a
`FederationSource`: by default the rounds the federation recorded in the audit log
(`appliance.store.audit_events.FederationAudit`); `StoreCollector.federation` is the hook
for another source. Nothing is made up: a figure the store does not hold is not exposed.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from appliance.store.audit_events import FederationTotals, federation_totals
from appliance.store.db import Database, StoreError
from appliance.store.job_types import Job
from appliance.store.schema import JOB_STATUSES

log = logging.getLogger("fame_node.metrics")

OUTCOMES = ("done", "rejected", "duplicate", "failed", "deferred")
SEND_STATUSES = ("pending", "sent", "failed")
_LABEL_VALUE = re.compile(r"[a-z0-9_]{1,48}")

FederationSource = Callable[[sqlite3.Connection], FederationTotals | None]
"""Reads the federation's figures (inside the scrape's read transaction); None: none yet."""


def label_value(value: str | None) -> str:
    """`value` as a label if it is a code (lower-case letters, digits, _), else "other"."""
    if value and _LABEL_VALUE.fullmatch(value):
        return value
    return "other" if value else "none"


class NodeMetrics:
    """What the pipeline observes, on the registry the endpoint serves."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.decode_seconds = Histogram(
            "fame_node_decode_seconds",
            "Decoding one input in the sandboxed decoder",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "fame_node_inference_seconds",
            "One job's frames through the model, preprocessing and postprocessing included",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.job_seconds = Histogram(
            "fame_node_job_seconds",
            "A job from its claim by a worker to its outcome",
            ["outcome"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.end_to_end_seconds = Histogram(
            "fame_node_end_to_end_seconds",
            "A file from queued to its results stored (waits for passing faults included)",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
            registry=self.registry,
        )
        for outcome in OUTCOMES:  # every series exists from the start (rate() needs it)
            self.job_seconds.labels(outcome)

    def finished(self, job: Job, outcome: str) -> None:
        """`job` (as claimed) reached `outcome`; times are the store's (UTC)."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown job outcome {outcome!r}; expected one of {OUTCOMES}")
        now = datetime.now(UTC)
        if job.started_at is not None:
            self.job_seconds.labels(outcome).observe(_since(job.started_at, now))
        if outcome == "done":
            self.end_to_end_seconds.observe(_since(job.created_at, now))


def _since(then: datetime, now: datetime) -> float:
    return max(0.0, (now - then).total_seconds())


def audit_federation(conn: sqlite3.Connection) -> FederationTotals | None:
    """The default `FederationSource`: the rounds recorded in the audit log."""
    totals = federation_totals(conn)
    if totals.rounds_joined == 0 and totals.rounds_declined == 0:
        return None
    return totals


class StoreCollector(Collector):
    """Figures read from the node's store at each scrape, in one read transaction.

    Opens its own connection (a short busy timeout: a scrape never waits long for a
    locked database; it reports ``fame_node_store_up 0`` instead).
    """

    def __init__(
        self,
        db_path: Path,
        *,
        federation: FederationSource = audit_federation,
        busy_timeout_s: float = 2.0,
    ) -> None:
        self._db_path = db_path
        self._busy_timeout_s = busy_timeout_s
        self._db: Database | None = None
        self.federation = federation

    def describe(self) -> Iterable[Metric]:
        return []  # registering reads nothing: the names are only known at a scrape

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("fame_node_store_up", "1 when the node's store could be read")
        try:
            if self._db is None:
                self._db = Database(self._db_path, busy_timeout_s=self._busy_timeout_s)
            with self._db.read() as conn:
                families = list(self._families(conn))
        except (StoreError, sqlite3.Error) as exc:
            log.warning("metrics: cannot read the store (%s)", exc)
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        return [up, *families]

    def _families(self, conn: sqlite3.Connection) -> Iterable[Metric]:
        by_status = {s: 0 for s in JOB_STATUSES}
        by_status.update(dict(conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status")))
        jobs = GaugeMetricFamily("fame_node_jobs", "Jobs in the store by status", labels=["status"])
        for status, n in by_status.items():
            jobs.add_metric([status], n)
        yield jobs
        waiting = conn.execute(
            "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND waiting_for IS NOT NULL"
        ).fetchone()[0]
        yield GaugeMetricFamily(
            "fame_node_jobs_waiting", "Queued jobs waiting out a passing fault", value=waiting
        )
        yield CounterMetricFamily(
            "fame_node_files_processed", "Files analysed, results stored", value=by_status["done"]
        )
        rejected = CounterMetricFamily(
            "fame_node_files_rejected", "Files rejected, by reason", labels=["error_code"]
        )
        counts: dict[str, int] = {}
        for code, n in conn.execute(
            "SELECT error_code, COUNT(*) FROM jobs WHERE status = 'rejected' GROUP BY error_code"
        ):
            counts[label_value(code)] = counts.get(label_value(code), 0) + int(n)
        for code, n in sorted(counts.items()):
            rejected.add_metric([code], n)
        yield rejected
        yield CounterMetricFamily(
            "fame_node_duplicates",
            "Files recorded as duplicates of an earlier job",
            value=by_status["duplicate"],
        )
        yield from _send_queue(conn)
        totals = self.federation(conn)
        if totals is not None:
            yield from _federation(totals)


def _send_queue(conn: sqlite3.Connection) -> Iterable[Metric]:
    sends = {s: 0 for s in SEND_STATUSES}
    sends.update(dict(conn.execute("SELECT status, COUNT(*) FROM outbound GROUP BY status")))
    queue = GaugeMetricFamily(
        "fame_node_dicom_objects",
        "DICOM SEG / SR in the send queue, by status",
        labels=["status"],
    )
    for status in ("pending", "failed"):
        queue.add_metric([status], sends[status])
    yield queue
    yield CounterMetricFamily(
        "fame_node_dicom_objects_sent", "DICOM SEG / SR sent to the PACS", value=sends["sent"]
    )


def _federation(totals: FederationTotals) -> Iterable[Metric]:
    rounds = CounterMetricFamily(
        "fame_node_federation_rounds",
        "Federation rounds this node joined or declined",
        labels=["decision"],
    )
    rounds.add_metric(["joined"], totals.rounds_joined)
    rounds.add_metric(["declined"], totals.rounds_declined)
    yield rounds
    if totals.epsilon_spent is not None and totals.delta is not None:
        yield GaugeMetricFamily(
            "fame_node_federation_epsilon_spent",
            "Cumulative differential-privacy epsilon this node has spent",
            value=totals.epsilon_spent,
        )
        yield GaugeMetricFamily(
            "fame_node_federation_delta",
            "The delta at which the epsilon spent is accounted",
            value=totals.delta,
        )


class ModelInfoCollector(Collector):
    """``fame_node_model_info``: the model, backend and device new jobs run on, read at
    each scrape from `describe` (so it follows a live model swap)."""

    def __init__(self, describe: Callable[[], dict[str, str]]) -> None:
        self._describe = describe

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        info = InfoMetricFamily("fame_node_model", "The model and backend new jobs run on")
        info.add_metric([], self._describe())
        return [info]
