"""`fame-node status` shows the federation from the ledger."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.config import load_config
from appliance.federation.ledger import PrivacyLedger
from appliance.federation.privacy import PrivacyAccountant
from appliance.federation.report import federation_report, format_federation
from appliance.status import format_status, gather_status


def test_status_shows_rounds_and_epsilon_spent_of_the_budget(tmp_path: Path) -> None:
    config = load_config(
        env={
            "FAME_NODE_PATHS__ROOT": str(tmp_path),
            "FAME_NODE_FEDERATION__PRIVACY__EPSILON_BUDGET": "4",
        }
    )
    config.folder("work").mkdir(parents=True)
    assert federation_report(config) is None  # off, and never trained: nothing to show
    with PrivacyLedger(config.database_path) as ledger:
        ledger.record_round("run-1", 1, "example", 1.1, 0.02, 100, 1e-5, 50)
        ledger.record_round("run-1", 2, "example", 1.1, 0.02, 100, 1e-5, 50)
        ledger.record_declined("run-1", 3, 1e-5)
    expected = PrivacyAccountant.from_history([(1.1, 0.02, 100)] * 2).epsilon(1e-5)
    report = federation_report(config)
    assert report is not None
    assert report["rounds_joined"] == 2 and report["rounds_declined"] == 1
    assert report["epsilon_spent"] == pytest.approx(expected)
    assert report["supernode"] == "not running" and not report["connected"]
    # A status file left by a supervisor that is gone does not say "connected".
    status_file = config.folder("work") / "federation" / "supernode-status.json"
    status_file.parent.mkdir()
    status_file.write_text(json.dumps({"state": "running", "connected": True, "supervisor_pid": 0}))
    assert federation_report(config)["connected"] is False  # type: ignore[index]

    data = gather_status(config)
    assert data["federation"]["rounds_joined"] == 2
    text = format_status(data)
    assert "2 joined, 1 declined" in text
    assert f"epsilon {expected:.3f} spent of 4 at delta 1e-05" in text
    assert format_federation(report)[0].startswith("federation off")
