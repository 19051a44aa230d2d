"""The wired application model: an empty node, and two reviewers over one store."""

from __future__ import annotations

from pathlib import Path

from appliance.app.models_panel import EventStoreRegistry
from appliance.app.session import ClinicalApp
from appliance.config import NodeConfig
from appliance.store.model_events import ModelEventStore
from tests.appliance.app.nodedata import add_done_job, node_config


def _app(node: NodeConfig, reviewer: str) -> ClinicalApp:
    node.database_path.parent.mkdir(parents=True, exist_ok=True)
    registry = EventStoreRegistry(ModelEventStore(node.database_path), "m@1")
    return ClinicalApp(node, registry, reviewer)


def test_starts_on_a_node_that_has_nothing_yet(tmp_path: Path) -> None:
    node = node_config(tmp_path / "fresh")
    app = _app(node, "alice")
    app.start()
    assert app.worklist.entries == []
    assert app.status.status.service_running is False
    assert app.status.status.counts["done"] == 0
    assert app.models.active_label == "m@1" and app.models.history == []
    app.close()


def test_a_decision_in_one_gui_reaches_the_other_on_its_next_poll(tmp_path: Path) -> None:
    node = node_config(tmp_path / "node")
    job = add_done_job(node, "a.png", diagnosis="benign")
    alice, bob = _app(node, "alice"), _app(node, "bob")
    for app in (alice, bob):
        app.start()
        app.viewer.open(job)
    bob.review.correct_diagnosis(job, [0], "malignant")
    frame = alice.viewer.frame
    assert frame is not None and frame.review is None  # not polled yet
    alice.poll()
    frame = alice.viewer.frame
    assert frame is not None and frame.review is not None
    assert (frame.review.reviewer, frame.review.diagnosis) == ("bob", "malignant")
    entry = alice.worklist.entry(job)
    assert entry is not None and entry.reviewed_diagnosis == "malignant"
    alice.close()
    bob.close()
