"""The federation page with the real widgets offscreen, over a real store: rounds in the
privacy ledger, deployment decisions in ``federation_models``, the supervisor's status."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.gui.conftest import QT_PROBLEM

if QT_PROBLEM:
    pytest.skip(QT_PROBLEM, allow_module_level=True)

from PyQt6.QtWidgets import QApplication

from appliance.app.federation_panel import FederationPanelModel
from appliance.config import load_config
from appliance.federation.ledger import PrivacyLedger
from appliance.federation.received import ReceivedModelStore
from appliance.federation.supervisor import STATUS_FILE
from gui.federation_panel import FederationPanel

pytestmark = pytest.mark.gui

# The test's screenshot goes to the repository's docs/ only when asked (FAME_SCREENSHOTS=1):
# a test run must leave the checkout as it found it.
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "gui-federation.png"


def test_the_panel_shows_connection_rounds_budget_and_each_model_decision(
    tmp_path: Path,
) -> None:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    qapp = QApplication.instance() or QApplication([])
    config = load_config(
        env={
            "FAME_NODE_PATHS__ROOT": str(tmp_path),
            "FAME_NODE_FEDERATION__ENABLED": "true",
            "FAME_NODE_FEDERATION__SUPERLINK": "fl.example.org:9092",
            "FAME_NODE_FEDERATION__INSECURE": "true",
        }
    )
    db = config.database_path
    db.parent.mkdir(parents=True, exist_ok=True)
    with PrivacyLedger(db) as ledger:
        for r in (1, 2):
            ledger.record_round("7", r, "example", 1.1, 0.1, 4, 1e-5, 24, {"n_examples": 24})
        ledger.record_declined("7", 3, 1e-5)
        spent = ledger.spent(1e-5)
    good = {"n": 7, "dice": 0.71, "auc": 0.82, "score": 0.765}
    old = {"n": 7, "dice": 0.64, "auc": 0.75, "score": 0.695}
    with ReceivedModelStore(db) as store:
        store.record(
            "7",
            2,
            "a" * 64,
            "deployed",
            "held-out score 0.7650 against 0.6950",
            model="fame-node-busi@0.1.0+fl.7.2",
            figures={"global": good, "running": old},
        )
        store.record(
            "8",
            2,
            "b" * 64,
            "refused",
            "held-out score 0.4100 is below the running model's 0.7650 by more than "
            "the margin 0.01 (federation.deploy_margin): the running model stays",
            model="fame-node-busi@0.1.0+fl.8.2",
            figures={"global": {"n": 7, "dice": 0.3, "auc": 0.52, "score": 0.41}, "running": good},
        )
    status = config.folder("work") / STATUS_FILE
    status.parent.mkdir(parents=True, exist_ok=True)
    status.write_text(json.dumps({"state": "running", "connected": True, "restarts": 1}))

    panel = FederationPanel(FederationPanelModel(config))
    panel.resize(1400, 420)
    panel.show()
    qapp.processEvents()
    assert panel.connection.text() == "SuperNode running, connected to the SuperLink, 1 restart(s)"
    assert panel.rounds.text() == "Rounds trained: 2   ·   declined: 1"
    assert f"epsilon {spent:.3f} of 8 spent" in panel.budget.format()
    assert 0 < spent < 8 and panel.budget.value() == round(1000 * spent / 8.0)
    assert panel.table.rowCount() == 2
    rows = [[panel.table.item(r, c).text() for c in range(7)] for r in range(2)]  # type: ignore[union-attr]
    assert rows[0][1:3] == ["8", "2"] and rows[0][5] == "Refused: kept model"
    assert "deploy_margin" in rows[0][6]
    assert rows[1][5] == "Deployed as fame-node-busi@0.1.0+fl.7.2"
    assert rows[1][3] == "Dice 0.710 · AUC 0.820 (n 7)"
    assert rows[1][4] == "Dice 0.640 · AUC 0.750 (n 7)"
    shot = DOCS_SCREENSHOT if os.environ.get("FAME_SCREENSHOTS") == "1" else tmp_path / "fed.png"
    shot.parent.mkdir(exist_ok=True)
    assert panel.grab().save(str(shot))
    panel.close()
