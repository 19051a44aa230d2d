"""What `fame-node status` shows of the federation: connection, rounds, budget spent.

Read from the privacy ledger (rounds joined, the epsilon spent at the configured delta,
against the budget), the audit log (rounds declined) and the supervisor's status file
(whether the SuperNode runs and is registered with the SuperLink). Reading needs neither
torch nor Flower's SuperNode; the epsilon comes from the ledger's Opacus accountant.
"""

from __future__ import annotations

import os
from typing import Any

from appliance.config import NodeConfig
from appliance.federation.ledger import PrivacyLedger
from appliance.federation.supervisor import read_supernode_status


def federation_report(config: NodeConfig) -> dict[str, Any] | None:
    """The federation's figures, or None when it is off and this node never trained."""
    f = config.federation
    with PrivacyLedger(config.database_path) as ledger:
        rounds = ledger.rounds()
        declined = ledger.declined_count()
        spent = ledger.spent(f.privacy.delta)
    if not f.enabled and not rounds and not declined:
        return None
    supernode = read_supernode_status(config)
    alive = supernode is not None and _alive(supernode.get("supervisor_pid"))
    state = str(supernode.get("state")) if supernode and alive else "not running"
    return {
        "enabled": f.enabled,
        "superlink": f.superlink,
        "supernode": state,
        "connected": bool(supernode.get("connected")) if supernode and alive else False,
        "restarts": int(str(supernode.get("restarts") or 0)) if supernode and alive else 0,
        "rounds_joined": len(rounds),
        "rounds_declined": declined,
        "last_round_at": rounds[-1].at.isoformat(timespec="seconds") if rounds else None,
        "privacy_mode": f.privacy.mode,
        "epsilon_spent": spent,
        "epsilon_budget": f.privacy.epsilon_budget,
        "delta": f.privacy.delta,
    }


def format_federation(r: dict[str, Any]) -> list[str]:
    """The report as `fame-node status` lines."""
    link = "connected" if r["connected"] else "not connected"
    lines = [
        f"federation {'on' if r['enabled'] else 'off'}, SuperNode {r['supernode']}, {link} "
        f"to {r['superlink'] or '-'}",
        f"  rounds  {r['rounds_joined']} joined, {r['rounds_declined']} declined"
        + (f", last {r['last_round_at']}" if r["last_round_at"] else ""),
        f"  privacy epsilon {r['epsilon_spent']:.3f} spent of {r['epsilon_budget']:g} at delta "
        f"{r['delta']:g} ({r['privacy_mode']}-level DP)",
    ]
    if r["epsilon_spent"] >= r["epsilon_budget"]:
        lines.append("  budget  spent: the node declines every further round")
    return lines


def _alive(pid: object) -> bool:
    try:
        number = int(str(pid))
        if number <= 0:  # 0 and negatives would signal process groups
            return False
        os.kill(number, 0)
    except (ProcessLookupError, ValueError, OverflowError):
        return False
    except PermissionError:
        return True
    return True
