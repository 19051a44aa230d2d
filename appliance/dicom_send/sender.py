"""The sender thread: due rows of the send queue to the PACS, results back into the queue.

`DicomSender.send_due()` is one round: it takes up to ``dicom_send.batch_size`` pending
rows whose wait is over (`OutboundQueue.claim_due`), sends them over one association
(`appliance.dicom_send.scu.send_batch`) and records each outcome:

* sent (success or a warning): ``sent``, the warning kept in ``last_error``;
* refused by the PACS: one attempt more, pending again after
  ``retry_initial_s * 2**attempts`` (capped at ``retry_max_s``), ``failed`` once
  ``max_attempts`` are spent (`fame-node outbox retry` puts it back);
* the PACS unreachable (no connection, association rejected or aborted, out of
  resources): every row of the batch waits, no attempt counted, the wait doubling with each
  round in a row that reaches nobody (up to ``retry_max_s``) and starting over after one
  that does;
* the file gone: ``failed`` at once.

`start()` runs rounds on a thread until `stop()`: at once while rows are due, else every
``poll_interval_s`` (or sooner when the next row is due sooner). A database locked or full
is waited out. The queue is in the store, so a restart loses nothing: a row whose send a
crash cut off is simply due again. Log lines name rows, jobs and the destination only.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from appliance.config import DicomSendConfig, NodeConfig
from appliance.dicom_send.scu import PACS_COMMENT, SendItem, SendOutcome, send_batch
from appliance.store.db import Clock, StoreError, utc_now
from appliance.store.outbound import Outbound, OutboundQueue

log = logging.getLogger("fame_node.dicom_send")


@dataclass(frozen=True)
class RoundReport:
    """What one `send_due` round did (counts of rows)."""

    sent: int = 0
    retried: int = 0
    failed: int = 0
    deferred: int = 0

    @property
    def total(self) -> int:
        return self.sent + self.retried + self.failed + self.deferred


class DicomSender:
    """Sends the queue's due rows to ``config``'s PACS; see the module docstring."""

    def __init__(self, config: DicomSendConfig, db_path: Path, *, clock: Clock = utc_now) -> None:
        self.config = config
        self.destination = config.destination()
        self._queue = OutboundQueue(db_path, clock=clock)
        self._clock = clock
        self._unreachable_rounds = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one round ---------------------------------------------------------------------
    def backoff_s(self, tries: int) -> float:
        """The wait after `tries` failed tries in a row (>= 1)."""
        c = self.config
        return min(c.retry_max_s, c.retry_initial_s * 2.0 ** min(max(tries - 1, 0), 30))

    def send_due(self) -> RoundReport:
        """Send what is due now, record the outcomes; returns what happened.

        Raises:
            StoreError: the database cannot be read or written.
        """
        rows = self._queue.claim_due(self.destination, self.config.batch_size)
        if not rows:
            return RoundReport()
        items = [SendItem(r.id, r.path, r.sop_instance_uid) for r in rows]
        outcomes = send_batch(self.config, items)
        by_id = {r.id: r for r in rows}
        sent = retried = failed = 0
        unreachable: list[SendOutcome] = []
        for outcome in outcomes:
            row = by_id[outcome.row_id]
            if outcome.verdict == "sent":
                self._queue.mark_sent(row.id, warning=outcome.detail)
                sent += 1
                log.info(
                    "sent %s of job %d (outbound %d) to %s%s",
                    row.kind.upper(),
                    row.job_id,
                    row.id,
                    self.destination,
                    f" with warning 0x{outcome.status:04X}" if outcome.detail else "",
                )
            elif outcome.verdict == "refused":
                done = self._refused(row, outcome)
                failed += done
                retried += 1 - done
            elif outcome.verdict == "gone":
                self._queue.mark_failed(row.id, str(outcome.detail))
                failed += 1
                log.error(
                    "outbound %d (%s of job %d) set aside: %s",
                    row.id,
                    row.kind.upper(),
                    row.job_id,
                    _first_clause(str(outcome.detail)),
                )
            else:
                unreachable.append(outcome)
        deferred = self._defer(unreachable, reached=sent + retried + failed > 0)
        return RoundReport(sent=sent, retried=retried, failed=failed, deferred=deferred)

    def _refused(self, row: Outbound, outcome: SendOutcome) -> int:
        """Record a refusal; 1 when the row is now failed, 0 when it waits for a retry."""
        c = self.config
        delay = self.backoff_s(row.attempts + 1)
        after = self._queue.mark_retry(
            row.id, str(outcome.detail), delay_s=delay, max_attempts=c.max_attempts
        )
        code = "no status" if outcome.status is None else f"0x{outcome.status:04X}"
        if after.status == "failed":
            log.error(
                "outbound %d (%s of job %d) refused by %s (%s) %d time(s): set aside as "
                "failed; `fame-node outbox list` says why, `fame-node outbox retry` resends",
                row.id,
                row.kind.upper(),
                row.job_id,
                self.destination,
                code,
                after.attempts,
            )
            return 1
        log.warning(
            "outbound %d (%s of job %d) refused by %s (%s); retried in %.0f s",
            row.id,
            row.kind.upper(),
            row.job_id,
            self.destination,
            code,
            delay,
        )
        return 0

    def _defer(self, outcomes: list[SendOutcome], *, reached: bool) -> int:
        if reached or not outcomes:
            self._unreachable_rounds = 0
        if not outcomes:
            return 0
        if not reached:
            self._unreachable_rounds += 1
        delay = self.backoff_s(max(self._unreachable_rounds, 1))
        reason = str(outcomes[0].detail)
        n = self._queue.defer([o.row_id for o in outcomes], reason, delay_s=delay)
        log.warning(
            "%d object(s) for %s wait %.0f s: %s",
            n,
            self.destination,
            delay,
            reason.split(PACS_COMMENT, 1)[0],
        )
        return n

    # -- the thread --------------------------------------------------------------------
    def start(self) -> None:
        """Run rounds on a thread until `stop()` (returns at once)."""
        if self._thread is not None:
            raise RuntimeError("the DICOM sender is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="fame-dicom-send", daemon=True)
        self._thread.start()
        log.info(
            "DICOM sender %s started: sending to %s",
            self.config.calling_ae_title,
            self.destination,
        )

    def stop(self, timeout: float = 30.0) -> None:
        """End the thread after the object in hand (an association is released)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._queue.close()
        log.info("DICOM sender stopped")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                report = self.send_due()
            except StoreError as exc:
                log.warning("DICOM sender: the database is unavailable (%s); retrying", exc)
                self._stop.wait(self.config.poll_interval_s)
                continue
            except Exception:  # the sender must outlive whatever one round does
                log.exception("DICOM sender: unexpected error; retrying")
                self._stop.wait(self.config.poll_interval_s)
                continue
            if report.sent + report.retried + report.failed == 0:
                self._stop.wait(self._idle_wait())

    def _idle_wait(self) -> float:
        try:
            due = self._queue.next_due(self.destination)
        except StoreError:
            return self.config.poll_interval_s
        return _until(due, self._clock(), self.config.poll_interval_s)


def start_sender(config: NodeConfig) -> DicomSender | None:
    """The running sender of the node's send queue; None when ``dicom_send`` is off."""
    if not config.dicom_send.enabled:
        return None
    sender = DicomSender(config.dicom_send, config.database_path)
    sender.start()
    return sender


def _until(due: datetime | None, now: datetime, cap: float) -> float:
    if due is None:
        return cap
    return min(cap, max(0.05, (due - now).total_seconds()))


def _first_clause(text: str) -> str:
    return text.split(";", 1)[0]
