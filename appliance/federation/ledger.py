"""The node's privacy ledger: every round it trained in, and the budget it enforces.

Stored in the node's own SQLite file (table ``federation_rounds``, schema v5; append-only,
triggers refuse UPDATE and DELETE), because Flower does not carry epsilon across runs and
a node must never get spent budget back by a restart, a new run or a new coordinator.
Each row holds what the accountant composes (``noise_multiplier``, ``sample_rate``,
``steps``), the delta, how many examples were trained on, the round's named metrics, and
the cumulative epsilon after it. Every epsilon comes from `PrivacyAccountant` (Opacus RDP)
over the whole stored history: no formula of this module's own.

The ClientApp calls `check_round` *before* it trains: it returns a `BudgetDecision` that
says whether the round fits the budget and why not. After training it calls
`record_round`, which appends the row and, in the same transaction, the round to the audit
log (`appliance.store.audit_events.record_federation_round`), so the two never disagree.
A declined round is recorded with `record_declined` (audit only: nothing was spent).

Each row stands for one time this node trained, even twice in the same server round (a
ClientApp run again after a crash trained again, and spent again): rows are never merged.

Errors: `LedgerError` (a `ValueError`) for out-of-range values, `StoreError` from the store.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, cast

from appliance.federation import LedgerError
from appliance.federation.privacy import PrivacyAccountant, StepRecord, check_delta, step_record
from appliance.store.audit_events import federation_totals, record_federation_round
from appliance.store.db import Clock, StoreBase, from_db_time, utc_now

Mode = Literal["example", "client"]
MODES: tuple[str, ...] = ("example", "client")


@dataclass(frozen=True)
class BudgetDecision:
    """Whether one more round fits the budget: `epsilon_after` is what it would leave."""

    allowed: bool
    epsilon_before: float
    epsilon_after: float
    budget: float
    delta: float
    reason: str


@dataclass(frozen=True)
class RoundRecord:
    """One row of the ledger: one time this node trained for the federation."""

    id: int
    at: datetime
    run_id: str
    server_round: int
    mode: Mode
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    n_examples: int
    metrics: dict[str, float | int] = field(default_factory=dict)
    epsilon: float = 0.0  # cumulative, after this round, at `delta`


class PrivacyLedger(StoreBase):
    """The rounds this node trained in and the epsilon they spent; thread-safe."""

    def __init__(self, db_path: Path, *, clock: Clock = utc_now) -> None:
        super().__init__(Path(db_path), clock=clock)

    # -- reading ---------------------------------------------------------------------------

    def history(self) -> list[StepRecord]:
        """What the accountant composes: (noise_multiplier, sample_rate, steps), oldest first."""
        with self._db.read() as conn:
            return _history(conn)

    def spent(self, delta: float) -> float:
        """The cumulative epsilon of every recorded round, at `delta`."""
        d = check_delta(delta)
        with self._db.read() as conn:
            last = conn.execute(
                "SELECT delta, epsilon FROM federation_rounds ORDER BY id DESC LIMIT 1"
            ).fetchone()
            if last is None:
                return 0.0
            if float(last[0]) == d:
                # The newest row holds the accountant's epsilon over the whole (append-only)
                # history at this delta: the same number, without loading the accountant.
                return float(last[1])
            return PrivacyAccountant.from_history(_history(conn)).epsilon(d)

    def rounds(self) -> list[RoundRecord]:
        """Every recorded round, oldest first (status, GUI, audit)."""
        with self._db.read() as conn:
            rows = conn.execute("SELECT * FROM federation_rounds ORDER BY id").fetchall()
        return [_record(r) for r in rows]

    def declined_count(self) -> int:
        """Rounds this node declined (from the audit log)."""
        with self._db.read() as conn:
            return federation_totals(conn).rounds_declined

    # -- the budget ------------------------------------------------------------------------

    def check_round(
        self,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        delta: float,
        budget: float,
    ) -> BudgetDecision:
        """Would one more round of these settings keep the node within `budget`?"""
        d = check_delta(delta)
        b = float(budget)
        if not math.isfinite(b) or b <= 0:
            raise LedgerError(
                f"budget = {budget!r}; expected federation.privacy.epsilon_budget, a number > 0"
            )
        accountant = PrivacyAccountant.from_history(self.history())
        before = accountant.epsilon(d)
        after = accountant.projected(noise_multiplier, sample_rate, steps, d)
        allowed = after <= b
        if allowed:
            reason = (
                f"this round would take epsilon from {before:.3f} to {after:.3f} at delta "
                f"{d:g}, within the budget of {b:g}"
            )
        else:
            reason = (
                f"declined: this round ({steps} steps at noise multiplier {noise_multiplier:g}, "
                f"sampling rate {sample_rate:.4g}) would take epsilon from {before:.3f} to "
                f"{after:.3f} at delta {d:g}, over the node's budget "
                f"federation.privacy.epsilon_budget = {b:g}. The node takes no further part "
                "in training; raise the budget only with your data protection officer's "
                "consent, or ask the coordinator for fewer steps or more noise"
            )
        return BudgetDecision(allowed, before, after, b, d, reason)

    # -- writing ---------------------------------------------------------------------------

    def record_round(
        self,
        run_id: str,
        server_round: int,
        mode: str,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        delta: float,
        n_examples: int,
        metrics: Mapping[str, float | int] | None = None,
        *,
        model: str | None = None,
        update_sha256: str | None = None,
    ) -> float:
        """Append one round this node trained in; returns the cumulative epsilon after it.

        `metrics` are named numbers only (n_examples, held-out Dice, ...): never a file
        name or identifier. The audit log gets the round in the same transaction.
        """
        run = _check_run_id(run_id)
        rnd = _check_count("server_round", server_round)
        n = _check_count("n_examples", n_examples)
        if mode not in MODES:
            raise LedgerError(f"mode = {mode!r}; expected one of {MODES} (federation.privacy.mode)")
        nm, q, s = step_record(noise_multiplier, sample_rate, steps)
        d = check_delta(delta)
        figures = _check_metrics(metrics or {})
        with self._db.write() as conn:
            history = _history(conn)
            history.append((nm, q, s))
            epsilon = PrivacyAccountant.from_history(history).epsilon(d)
            now = self._now()
            conn.execute(
                "INSERT INTO federation_rounds (at, run_id, server_round, mode, "
                "noise_multiplier, sample_rate, steps, delta, n_examples, metrics, epsilon) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (now, run, rnd, mode, nm, q, s, d, n, json.dumps(figures), epsilon),
            )
            record_federation_round(
                conn,
                federation=run,
                round_id=rnd,
                decision="joined",
                epsilon_spent=epsilon,
                delta=d,
                n_examples=n,
                model=model,
                update_sha256=update_sha256,
                at=now,
            )
        return epsilon

    def record_declined(self, run_id: str, server_round: int, delta: float) -> float:
        """Record a round this node declined (audit log); returns the epsilon spent so far."""
        run = _check_run_id(run_id)
        rnd = _check_count("server_round", server_round)
        d = check_delta(delta)
        with self._db.write() as conn:
            epsilon = PrivacyAccountant.from_history(_history(conn)).epsilon(d)
            record_federation_round(
                conn,
                federation=run,
                round_id=rnd,
                decision="declined",
                epsilon_spent=epsilon,
                delta=d,
                n_examples=0,
                at=self._now(),
            )
        return epsilon


def _history(conn: sqlite3.Connection) -> list[StepRecord]:
    rows = conn.execute(
        "SELECT noise_multiplier, sample_rate, steps FROM federation_rounds ORDER BY id"
    ).fetchall()
    return [(float(r[0]), float(r[1]), int(r[2])) for r in rows]


def _record(row: sqlite3.Row) -> RoundRecord:
    return RoundRecord(
        id=int(row["id"]),
        at=from_db_time(row["at"]),
        run_id=row["run_id"],
        server_round=int(row["server_round"]),
        mode=cast(Mode, row["mode"]),
        noise_multiplier=float(row["noise_multiplier"]),
        sample_rate=float(row["sample_rate"]),
        steps=int(row["steps"]),
        delta=float(row["delta"]),
        n_examples=int(row["n_examples"]),
        metrics=json.loads(row["metrics"]),
        epsilon=float(row["epsilon"]),
    )


def _check_run_id(run_id: Any) -> str:
    text = str(run_id).strip()
    if not text or len(text) > 64 or not text.isprintable():
        raise LedgerError(
            f"run_id = {run_id!r}; expected the Flower run id (1-64 printable characters)"
        )
    return text


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise LedgerError(f"{name} = {value!r}; expected a whole number >= 0")
    return value


def _check_metrics(metrics: Mapping[str, Any]) -> dict[str, float | int]:
    """Named finite numbers only: a string could carry a file name or an identifier."""
    out: dict[str, float | int] = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not key.replace("_", "").replace("-", "").isalnum():
            raise LedgerError(
                f"metric name {key!r}; expected letters, digits, '_' or '-' (e.g. heldout_dice)"
            )
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise LedgerError(
                f"metric {key} = {value!r}; expected a number (metrics never carry text)"
            )
        if not math.isfinite(value):
            raise LedgerError(f"metric {key} = {value!r}; expected a finite number")
        out[key] = value
    return out
