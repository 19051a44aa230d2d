"""The node's privacy accountant: epsilon of everything it trained, from Opacus's RDP.

Each training round this node runs with DP is one Gaussian mechanism, subsampled and
composed: ``steps`` noisy steps at ``sample_rate`` (the Poisson sampling rate, a batch's
expected share of the examples) with noise standard deviation ``noise_multiplier`` times the
clipping norm. Opacus's `RDPAccountant` keeps exactly that as its ``history``, a list of
``(noise_multiplier, sample_rate, steps)``, and composes it in Rényi DP before converting
to (epsilon, delta). `PrivacyAccountant` is a thin, validating wrapper over it: it never
computes a bound of its own. The node stores the history (`appliance.federation.ledger`)
and rebuilds the accountant from it, because Flower does not carry epsilon across runs.

For client-level DP the same triple describes the node's rounds as the coordinator's
Gaussian mechanism sees them: one step per round, the sampling rate the share of nodes
picked per round, the noise multiplier of the aggregate.

Bad values raise `LedgerError` (a `ValueError`) naming what was received and expected.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from appliance.federation import LedgerError

StepRecord = tuple[float, float, int]
"""One round as the accountant composes it: (noise_multiplier, sample_rate, steps)."""


def step_record(noise_multiplier: float, sample_rate: float, steps: int) -> StepRecord:
    """One round's `StepRecord`, checked.

    Raises:
        LedgerError: noise_multiplier not a finite number > 0, sample_rate not in (0, 1],
            or steps not an integer >= 1.
    """
    nm = float(noise_multiplier)
    q = float(sample_rate)
    if not math.isfinite(nm) or nm <= 0:
        raise LedgerError(
            f"noise_multiplier = {noise_multiplier!r}; expected a finite number > 0 (without "
            "noise there is no differential privacy to account)"
        )
    if not math.isfinite(q) or not 0 < q <= 1:
        raise LedgerError(
            f"sample_rate = {sample_rate!r}; expected the Poisson sampling rate, in (0, 1] "
            "(batch size over the number of training examples)"
        )
    if isinstance(steps, bool) or int(steps) != steps or int(steps) < 1:
        raise LedgerError(f"steps = {steps!r}; expected a whole number of optimiser steps >= 1")
    return (nm, q, int(steps))


def check_delta(delta: float) -> float:
    """`delta` as a float, checked to lie in (0, 1)."""
    d = float(delta)
    if not math.isfinite(d) or not 0 < d < 1:
        raise LedgerError(
            f"delta = {delta!r}; expected a number in (0, 1), well below 1 / (number of "
            "training examples), e.g. 1e-5"
        )
    return d


class PrivacyAccountant:
    """Epsilon of a history of DP rounds, composed by Opacus's `RDPAccountant`."""

    step_record = staticmethod(step_record)

    def __init__(self) -> None:
        # Imported here: opacus brings torch, which `fame-node status` should not pay for.
        from opacus.accountants import RDPAccountant

        self._accountant: Any = RDPAccountant()

    @classmethod
    def from_history(cls, history: Iterable[Sequence[float | int]]) -> PrivacyAccountant:
        """The accountant of `history`: ``(noise_multiplier, sample_rate, steps)`` rows."""
        accountant = cls()
        for row in history:
            if len(row) != 3:
                raise LedgerError(
                    f"history row {tuple(row)!r}; expected (noise_multiplier, sample_rate, steps)"
                )
            accountant.add(float(row[0]), float(row[1]), int(row[2]))
        return accountant

    @property
    def history(self) -> list[StepRecord]:
        """What the accountant composes, as Opacus keeps it (a copy)."""
        return [(float(n), float(q), int(s)) for n, q, s in self._accountant.history]

    def add(self, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        """Compose one more round."""
        self._accountant.history.append(step_record(noise_multiplier, sample_rate, steps))

    def epsilon(self, delta: float) -> float:
        """The epsilon spent so far at `delta` (0 for an empty history)."""
        d = check_delta(delta)
        if not self._accountant.history:
            return 0.0
        return float(self._accountant.get_epsilon(delta=d))

    def projected(
        self, noise_multiplier: float, sample_rate: float, steps: int, delta: float
    ) -> float:
        """The epsilon at `delta` if one round of these settings were added."""
        after = PrivacyAccountant.from_history(self.history)
        after.add(noise_multiplier, sample_rate, steps)
        return after.epsilon(delta)
