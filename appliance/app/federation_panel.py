"""The federation panel's model: the SuperNode's connection, the rounds this node joined
or declined, the privacy budget spent, and the global models received with what became
of each (deployed as which version, or refused and why). No Qt here (`gui.federation`
is the view); it reads the supervisor's status file
(`appliance.federation.supervisor.read_supernode_status`), the privacy ledger
(`appliance.federation.ledger`) and the deployment decisions
(`appliance.federation.received`), all of the node's own store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from appliance.config import NodeConfig
from appliance.federation.ledger import PrivacyLedger
from appliance.federation.received import ModelDecision, ReceivedModelStore
from appliance.federation.supervisor import read_supernode_status


@dataclass(frozen=True)
class FederationView:
    enabled: bool
    connection: str  # in words, for the header
    rounds_joined: int
    rounds_declined: int
    epsilon_spent: float
    epsilon_budget: float
    delta: float
    models: list[ModelDecision] = field(default_factory=list)

    @property
    def budget_share(self) -> float:
        return min(1.0, self.epsilon_spent / self.epsilon_budget)


def connection_text(enabled: bool, status: dict[str, Any] | None) -> str:
    if not enabled:
        return "Federation off (federation.enabled = false)"
    if status is None:
        return "SuperNode not started yet (no status from the service)"
    state = str(status.get("state", "unknown"))
    connected = status.get("connected")
    link = (
        "connected to the SuperLink"
        if connected is True
        else "not connected"
        if connected is False
        else "connection not known yet"
    )
    restarts = int(status.get("restarts", 0) or 0)
    extra = f", {restarts} restart(s)" if restarts else ""
    return f"SuperNode {state}, {link}{extra}"


def heldout_text(figures: dict[str, Any], which: str) -> str:
    """``Dice 0.81 · AUC 0.77 (n 12)`` for ``global`` or ``running``; ``–`` if unmeasured."""
    f = figures.get(which)
    if not isinstance(f, dict) or not f.get("n"):
        return "–"
    parts = [
        f"{k} {f[key]:.3f}"
        for k, key in (("Dice", "dice"), ("AUC", "auc"))
        if isinstance(f.get(key), int | float)
    ]
    return " · ".join(parts) + f" (n {f['n']})" if parts else f"n {f['n']}"


class FederationPanelModel:
    """Reads the federation's state on `refresh`; the view redraws from `view`."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.view = self.refresh()

    def refresh(self) -> FederationView:
        fed = self.config.federation
        db = self.config.database_path
        with PrivacyLedger(db) as ledger:
            rounds = ledger.rounds()
            declined = ledger.declined_count()
            spent = ledger.spent(fed.privacy.delta)
        with ReceivedModelStore(db) as store:
            models = store.decisions()
        self.view = FederationView(
            enabled=fed.enabled,
            connection=connection_text(fed.enabled, read_supernode_status(self.config)),
            rounds_joined=len(rounds),
            rounds_declined=declined,
            epsilon_spent=spent,
            epsilon_budget=fed.privacy.epsilon_budget,
            delta=fed.privacy.delta,
            models=models,
        )
        return self.view


__all__ = ["FederationPanelModel", "FederationView", "connection_text", "heldout_text"]
