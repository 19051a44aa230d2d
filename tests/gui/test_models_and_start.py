"""The models panel's rollback (asks first), and starting the GUI on an empty store."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gui.conftest import QT_PROBLEM

if QT_PROBLEM is not None:
    pytest.skip(QT_PROBLEM, allow_module_level=True)

from PyQt6.QtCore import QTimer
from PyQt6.QtWidgets import QApplication, QMessageBox

from appliance.cli import main
from appliance.store.model_events import ModelEventStore
from tests.appliance.app.nodedata import node_config
from tests.appliance.app.test_models_panel import StackRegistry

pytestmark = pytest.mark.gui


def answer_next_message_box(qtbot, button_text: str, seen: list[str]) -> None:
    """When the next modal message box opens, record its text and press `button_text`."""

    def answer() -> None:
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            QTimer.singleShot(20, answer)
            return
        seen.append(box.text())
        (button,) = [b for b in box.buttons() if b.text() == button_text]
        button.click()

    QTimer.singleShot(0, answer)


def test_rollback_asks_before_acting(tmp_path: Path, make_window, qtbot) -> None:
    node = node_config(tmp_path / "node")
    events = ModelEventStore(node.database_path)
    events.record("fame-node-busi@0.1.0", "activated", "install", reason="initial model")
    events.record(
        "fame-node-busi@0.2.0",
        "activated",
        "federation",
        reason="round 3 of the federation",
        figures={"dice": 0.74, "macro_auc": 0.88},
    )
    window = make_window(node, registry=StackRegistry(events), reviewer="dr-admin")
    panel = window.models
    assert panel.active.text() == "fame-node-busi@0.2.0"
    assert not panel.rollback_button.isEnabled()  # no reason given yet
    qtbot.keyClicks(panel.reason, "Dice dropped on our own cases")
    assert panel.rollback_button.isEnabled()

    seen: list[str] = []
    answer_next_message_box(qtbot, "Cancel", seen)
    panel.rollback_button.click()
    assert seen == ["Roll back from fame-node-busi@0.2.0 to fame-node-busi@0.1.0?"]
    assert [e.action for e in events.history()] == ["activated", "activated"]  # nothing done

    answer_next_message_box(qtbot, "Roll back", seen)
    panel.rollback_button.click()
    newest = events.history()[0]
    assert (newest.action, newest.model, newest.actor) == (
        "rolled_back",
        "fame-node-busi@0.1.0",
        "dr-admin",
    )
    assert newest.reason == "Dice dropped on our own cases"
    assert panel.active.text() == "fame-node-busi@0.1.0"
    assert panel.table.rowCount() == 3
    assert not panel.rollback_button.isEnabled()


def test_starts_cleanly_on_an_empty_store(tmp_path: Path, make_window) -> None:
    window = make_window(node_config(tmp_path / "node"))
    assert window.worklist.table_model.rowCount() == 0
    assert window.worklist.count.text().startswith("0 of 0 images")
    assert "not running" in window.service_label.text()
    assert window.viewer_model.case is None
    assert window.open_case(1) is False  # nothing there: a message, not an exception
    assert window.message_label.text()


def test_fame_node_gui_command_runs_the_window(tmp_path: Path, qapp, monkeypatch) -> None:
    monkeypatch.setenv("FAME_NODE_PATHS__ROOT", str(tmp_path / "node"))
    shown: list[str] = []

    def run_briefly() -> int:
        # Instead of the blocking event loop: let the window draw, note it, close it.
        for _ in range(5):
            qapp.processEvents()
        for w in QApplication.topLevelWidgets():
            if w.isVisible():
                shown.append(w.windowTitle())
                w.close()
        return 0

    monkeypatch.setattr(qapp, "exec", run_briefly)
    assert main(["gui", "--reviewer", "dr-smoke"]) == 0
    assert "FAME Node — fame-node" in shown
    assert (tmp_path / "node" / "fame-node.sqlite3").is_file()
