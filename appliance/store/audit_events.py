"""What the node writes into the audit log (`appliance.store.audit`), event by event.

Each function runs inside the caller's write transaction, beside the change it records:

    result            a job's results stored (`ResultStore.save_completed`)
    job_rejected      a job rejected (its input error code), at intake or by a worker
    job_failed        a job failed (an internal error)
    review            a clinician's decision on one frame
    review_undone     a decision taken back
    model_<action>    a model installed, activated, refused, rolled back, removed
    federation_round  a federation round joined or declined, with the privacy budget

The details hold job and row ids, the content's sha256, model versions, decisions, flags
and counts: never a patient's name or ID, a file name or a person's free text.
`FederationAudit` is the federation's side (issue 9): it records each round and reads
back the rounds joined and the epsilon spent, which the metrics endpoint exposes.
"""

from __future__ import annotations

import hashlib
import math
import re
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from appliance.store.audit import (
    FEDERATION_ROUND,
    JOB_FAILED,
    JOB_REJECTED,
    MODEL_PREFIX,
    RESULT,
    REVIEW,
    REVIEW_UNDONE,
    AuditEntry,
    AuditLog,
    append,
)
from appliance.store.job_types import Job, JobStatus

NODE_ACTOR = "node"


class FrameFindings(Protocol):
    """What the audit records of one analysed frame (`FrameResultRow` has it)."""

    @property
    def frame_index(self) -> int: ...
    @property
    def diagnosis(self) -> str | None: ...
    @property
    def confidence(self) -> float | None: ...
    @property
    def n_lesions(self) -> int | None: ...
    @property
    def flags(self) -> Sequence[str]: ...


def record_result(
    conn: sqlite3.Connection,
    job: Job,
    frames: Sequence[FrameFindings],
    model_version: str,
    backend: str,
    at: str,
) -> AuditEntry:
    """A job's results stored: per frame its diagnosis, confidence, lesions and flags."""
    detail = {
        "job": job.id,
        "sha256": job.sha256,
        "model": model_version,
        "backend": backend,
        "frames": [
            {
                "frame": f.frame_index,
                "diagnosis": f.diagnosis,
                "confidence": None if f.confidence is None else round(f.confidence, 6),
                "lesions": f.n_lesions,
                "flags": list(f.flags),
            }
            for f in frames
        ],
    }
    return append(conn, NODE_ACTOR, RESULT, f"job:{job.id}", detail, at=at)


def record_job_end(conn: sqlite3.Connection, job: Job, at: str) -> AuditEntry:
    """A job rejected or failed: its error code (the reason text stays in ``jobs``)."""
    actions = {JobStatus.REJECTED: JOB_REJECTED, JobStatus.FAILED: JOB_FAILED}
    action = actions.get(job.status)
    if action is None:
        raise ValueError(
            f"job {job.id} is {job.status}; only rejected and failed jobs are recorded as a "
            "job end (a done job is recorded with its results)"
        )
    detail = {
        "job": job.id,
        "sha256": job.sha256,
        "error_code": job.error_code,
        "attempts": job.attempts,
    }
    return append(conn, NODE_ACTOR, action, f"job:{job.id}", detail, at=at)


def record_review(
    conn: sqlite3.Connection,
    *,
    review_id: int,
    job_id: int,
    frame_index: int,
    decision: str,
    diagnosis: str | None,
    mask_redrawn: bool,
    with_note: bool,
    reviewer: str,
    at: str,
) -> AuditEntry:
    """A clinician's decision on a frame; the reviewer is the actor."""
    detail = {
        "review": review_id,
        "job": job_id,
        "frame": frame_index,
        "decision": decision,
        "diagnosis": diagnosis,
        "mask_redrawn": mask_redrawn,
        "with_note": with_note,
    }
    return append(conn, reviewer, REVIEW, f"job:{job_id} frame:{frame_index}", detail, at=at)


def record_review_undone(
    conn: sqlite3.Connection,
    *,
    review_id: int,
    job_id: int,
    frame_index: int,
    decision: str,
    by: str,
    at: str,
) -> AuditEntry:
    """Decision `review_id` taken back by `by`."""
    detail = {"review": review_id, "job": job_id, "frame": frame_index, "decision": decision}
    return append(conn, by, REVIEW_UNDONE, f"job:{job_id} frame:{frame_index}", detail, at=at)


def record_model_event(
    conn: sqlite3.Connection,
    *,
    event_id: int,
    model: str,
    action: str,
    actor: str,
    with_reason: bool,
    figures: Mapping[str, Any],
    at: str,
) -> AuditEntry:
    """A row of the model history; its reason and bundle folder stay in ``model_events``
    (an error text may quote a path), the audit row names that row."""
    model = _label(model)
    detail = {
        "model_event": event_id,
        "model": model,
        "with_reason": with_reason,
        "figures": _numbers_only(figures),
    }
    return append(conn, actor, MODEL_PREFIX + action, f"model:{model}", detail, at=at)


_LABEL = re.compile(r"[A-Za-z0-9._+@-]{1,200}")


def _label(model: str) -> str:
    """`model` (``name@version``, or a folder's name for a bundle that cannot be read) if
    it is a plain label, else a digest of it: a refusal is recorded whatever the name."""
    if _LABEL.fullmatch(model):
        return model
    return "unnamed:" + hashlib.sha256(model.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _finite_number(value: Any) -> bool:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and math.isfinite(value)


def _numbers_only(figures: Mapping[str, Any]) -> dict[str, Any]:
    """The measured figures (numbers, nested by name); anything else is left out."""
    out: dict[str, Any] = {}
    for key, value in figures.items():
        if isinstance(value, Mapping):
            inner = _numbers_only(value)
            if inner:
                out[str(key)] = inner
        elif _finite_number(value):
            out[str(key)] = value
    return out


@dataclass(frozen=True)
class FederationTotals:
    """What the audit log says of the federation: rounds this node trained in, and the
    privacy budget spent (the cumulative epsilon of the newest round, at its delta)."""

    rounds_joined: int
    rounds_declined: int
    epsilon_spent: float | None
    delta: float | None


FEDERATION_DECISIONS = ("joined", "declined")


def record_federation_round(
    conn: sqlite3.Connection,
    *,
    federation: str,
    round_id: int,
    decision: str,
    epsilon_spent: float,
    delta: float,
    n_examples: int,
    model: str | None = None,
    update_sha256: str | None = None,
    at: str | None = None,
) -> AuditEntry:
    """Record one federation round in the audit log (inside the caller's transaction).

    `decision` is ``joined`` (trained and sent an update) or ``declined`` (e.g. the
    round would exceed the privacy budget); `epsilon_spent` is the node's *cumulative*
    epsilon after the round, from its accountant, at `delta`; `n_examples` how many local
    examples it trained on; `model` the model version it started from; `update_sha256`
    the digest of the update it sent.

    Raises:
        ValueError: a value out of range (what was received and what is expected).
    """
    if decision not in FEDERATION_DECISIONS:
        raise ValueError(
            f"federation round decision {decision!r}; expected one of {FEDERATION_DECISIONS}"
        )
    if round_id < 0 or n_examples < 0:
        raise ValueError(f"round_id and n_examples must be >= 0, got {round_id} and {n_examples}")
    if not math.isfinite(epsilon_spent) or epsilon_spent < 0:
        raise ValueError(f"epsilon_spent must be a finite number >= 0, got {epsilon_spent!r}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be between 0 and 1 (exclusive), got {delta!r}")
    if update_sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", update_sha256):
        raise ValueError(f"update_sha256 must be 64 hexadecimal digits, got {update_sha256!r}")
    detail = {
        "federation": federation,
        "round": int(round_id),
        "decision": decision,
        "epsilon_spent": float(epsilon_spent),
        "delta": float(delta),
        "n_examples": int(n_examples),
        "model": model,
        "update_sha256": update_sha256,
    }
    return append(
        conn, "federation", FEDERATION_ROUND, f"round:{federation}:{round_id}", detail, at=at
    )


def federation_totals(conn: sqlite3.Connection) -> FederationTotals:
    """Rounds joined and declined, and the newest cumulative epsilon, from the audit log."""
    counts = dict(
        conn.execute(
            "SELECT json_extract(detail, '$.decision'), COUNT(*) FROM audit "
            "WHERE action = ? GROUP BY 1",
            (FEDERATION_ROUND,),
        ).fetchall()
    )
    last = conn.execute(
        "SELECT json_extract(detail, '$.epsilon_spent'), json_extract(detail, '$.delta') "
        "FROM audit WHERE action = ? ORDER BY id DESC LIMIT 1",
        (FEDERATION_ROUND,),
    ).fetchone()
    return FederationTotals(
        rounds_joined=int(counts.get("joined", 0)),
        rounds_declined=int(counts.get("declined", 0)),
        epsilon_spent=None if last is None else float(last[0]),
        delta=None if last is None else float(last[1]),
    )


class FederationAudit(AuditLog):
    """The federation's side of the audit log (issue 9 calls it after every round)."""

    def record_round(self, **kwargs: Any) -> AuditEntry:
        """`record_federation_round` in a transaction of its own (same keywords)."""
        with self._db.write() as conn:
            return record_federation_round(conn, at=self._now(), **kwargs)

    def totals(self) -> FederationTotals:
        with self._db.read() as conn:
            return federation_totals(conn)
