"""The privacy accountant against Opacus's own numbers, and the ledger in a real store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant

from appliance.federation import LedgerError
from appliance.federation.ledger import PrivacyLedger
from appliance.federation.privacy import PrivacyAccountant
from appliance.store.audit import AuditLog

# Two runs of local DP-SGD at different settings: (noise multiplier, sample rate, steps).
HISTORY = [(1.1, 0.01, 300), (1.1, 0.01, 300), (0.9, 0.02, 120)]
DELTA = 1e-5


def opacus_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """What Opacus's accountant says when stepped as Opacus's optimiser steps it."""
    acc = RDPAccountant()
    for nm, q, steps in history:
        for _ in range(steps):
            acc.step(noise_multiplier=nm, sample_rate=q)
    return float(acc.get_epsilon(delta=delta))


def test_epsilon_is_opacus_own_for_a_known_history() -> None:
    expected = opacus_epsilon(HISTORY, DELTA)
    accountant = PrivacyAccountant.from_history(HISTORY)
    assert accountant.epsilon(DELTA) == pytest.approx(expected, rel=1e-12)
    assert 0.5 < expected < 10  # a real, non-trivial epsilon, not 0 or inf
    # Each round costs: the epsilon grows with the history.
    assert PrivacyAccountant.from_history(HISTORY[:1]).epsilon(DELTA) < expected
    assert PrivacyAccountant().epsilon(DELTA) == 0.0


def test_projected_is_the_epsilon_with_the_round_added() -> None:
    accountant = PrivacyAccountant.from_history(HISTORY[:2])
    projected = accountant.projected(0.9, 0.02, 120, DELTA)
    assert projected == pytest.approx(opacus_epsilon(HISTORY, DELTA), rel=1e-12)
    assert accountant.history == HISTORY[:2]  # projecting changes nothing


@pytest.mark.parametrize(
    ("nm", "q", "steps", "what"),
    [(0.0, 0.01, 10, "noise_multiplier"), (1.0, 1.5, 10, "sample_rate"), (1.0, 0.1, 0, "steps")],
)
def test_bad_settings_are_refused_with_what_was_received(
    nm: float, q: float, steps: int, what: str
) -> None:
    with pytest.raises(LedgerError, match=what):
        PrivacyAccountant.step_record(nm, q, steps)
    with pytest.raises(LedgerError, match="delta"):
        PrivacyAccountant().epsilon(1.0)


def test_ledger_persists_rounds_and_their_cumulative_epsilon(tmp_path: Path) -> None:
    db = tmp_path / "node.sqlite3"
    with PrivacyLedger(db) as ledger:
        eps = [
            ledger.record_round(
                "run-7", i + 1, "example", nm, q, s, DELTA, 40, {"heldout_dice": 0.7}
            )
            for i, (nm, q, s) in enumerate(HISTORY)
        ]
    assert eps == sorted(eps) and eps[0] < eps[-1]
    with PrivacyLedger(db) as again:  # a restart: nothing is forgotten
        assert again.history() == HISTORY
        assert again.spent(DELTA) == pytest.approx(opacus_epsilon(HISTORY, DELTA), rel=1e-12)
        rounds = again.rounds()
    assert [r.server_round for r in rounds] == [1, 2, 3]
    assert rounds[-1].epsilon == pytest.approx(eps[-1])
    assert rounds[0].metrics == {"heldout_dice": 0.7}
    # The audit log has each round, with the same cumulative epsilon.
    with AuditLog(db) as audit:
        entries = audit.read(action="federation_round")
    assert [e.detail["epsilon_spent"] for e in entries] == pytest.approx(eps)


def test_check_round_declines_a_round_past_the_budget(tmp_path: Path) -> None:
    with PrivacyLedger(tmp_path / "node.sqlite3") as ledger:
        ledger.record_round("r", 1, "example", *HISTORY[0], DELTA, 40)
        spent = ledger.spent(DELTA)
        after = PrivacyAccountant.from_history(HISTORY[:2]).epsilon(DELTA)
        ok = ledger.check_round(*HISTORY[1], DELTA, budget=after + 0.01)
        assert ok.allowed and ok.epsilon_after == pytest.approx(after)
        no = ledger.check_round(*HISTORY[1], DELTA, budget=after - 0.01)
        assert not no.allowed
        assert no.epsilon_before == pytest.approx(spent)
        assert "declined" in no.reason and "epsilon_budget" in no.reason
        assert ledger.record_declined("r", 2, DELTA) == pytest.approx(spent)
        assert ledger.declined_count() == 1
        assert ledger.spent(DELTA) == pytest.approx(spent)  # declining spends nothing


def test_the_ledger_cannot_be_rewritten(tmp_path: Path) -> None:
    db = tmp_path / "node.sqlite3"
    with PrivacyLedger(db) as ledger:
        ledger.record_round("r", 1, "example", *HISTORY[0], DELTA, 40)
    conn = sqlite3.connect(db)
    try:
        for sql in ("DELETE FROM federation_rounds", "UPDATE federation_rounds SET epsilon = 0"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(sql)
    finally:
        conn.close()


def test_metrics_carry_numbers_only(tmp_path: Path) -> None:
    with PrivacyLedger(tmp_path / "node.sqlite3") as ledger:
        with pytest.raises(LedgerError, match="expected a number"):
            ledger.record_round("r", 1, "example", 1.0, 0.1, 5, DELTA, 3, {"case": "pat-01.dcm"})
        with pytest.raises(LedgerError, match="mode"):
            ledger.record_round("r", 1, "central", 1.0, 0.1, 5, DELTA, 3)
        assert ledger.rounds() == []


def test_spent_at_another_delta_is_recomputed_by_the_accountant(tmp_path: Path) -> None:
    with PrivacyLedger(tmp_path / "node.sqlite3") as ledger:
        for nm, q, s in HISTORY:
            ledger.record_round("r", 1, "example", nm, q, s, DELTA, 40)
        assert ledger.spent(1e-3) == pytest.approx(opacus_epsilon(HISTORY, 1e-3), rel=1e-12)
        assert ledger.spent(1e-3) < ledger.spent(DELTA)
