"""The models panel's model over a registry, and the read-only stand-in."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.app.models_panel import (
    BackendInfo,
    EventStoreRegistry,
    ModelsPanelModel,
    RegistryUnavailableError,
    activation_stack,
    figures_text,
)
from appliance.store.model_events import ModelEvent, ModelEventStore


class StackRegistry:
    """The registry's three methods over a real ModelEventStore (activations as a stack)."""

    def __init__(self, events: ModelEventStore) -> None:
        self.events = events

    def history(self) -> list[ModelEvent]:
        return self.events.history()

    def active_label(self) -> str:
        return activation_stack(self.history())[-1]

    def rollback(self, actor: str, reason: str) -> ModelEvent:
        stack = activation_stack(self.history())
        if len(stack) < 2:
            raise RegistryUnavailableError("nothing to roll back to")
        return self.events.record(stack[-2], "rolled_back", actor, reason=reason)


@pytest.fixture
def events(tmp_path: Path) -> ModelEventStore:
    store = ModelEventStore(tmp_path / "db.sqlite3")
    store.record(
        "m@1", "installed", "install", figures={"busi_val": {"dice": 0.71, "macro_auc": 0.9}}
    )
    store.record("m@1", "activated", "install", reason="initial model")
    store.record("m@2", "refused", "federation", reason="checksum mismatch")
    store.record("m@3", "activated", "federation", reason="round 4", figures={"dice": 0.74})
    return store


def test_history_active_model_and_rollback(events: ModelEventStore) -> None:
    model = ModelsPanelModel(StackRegistry(events))
    seen: list[str] = []
    model.changed.connect(lambda m: seen.append(m.active_label))
    assert model.poll() and not model.poll()
    assert model.active_label == "m@3" and model.rollback_target == "m@1"
    assert [e.action for e in model.history] == ["activated", "refused", "activated", "installed"]
    with pytest.raises(ValueError, match="needs a reason"):
        model.rollback("alice", " ")
    event = model.rollback("alice", "worse on our cases")
    assert (event.action, event.model, event.actor) == ("rolled_back", "m@1", "alice")
    assert model.active_label == "m@1" and model.rollback_target is None
    assert seen == ["m@3", "m@1"]
    model.set_backend(BackendInfo("onnxruntime", "CPUExecutionProvider", "service"))
    assert model.backend.provider == "CPUExecutionProvider" and len(seen) == 3


def test_stand_in_shows_history_and_refuses_rollback(events: ModelEventStore) -> None:
    registry = EventStoreRegistry(events, "config-model@0")
    assert registry.active_label() == "m@3"
    with pytest.raises(RegistryUnavailableError, match="model registry not available"):
        registry.rollback("alice", "why")
    empty = EventStoreRegistry(ModelEventStore(Path(events.path).with_name("empty.sqlite3")), "x@0")
    assert empty.active_label() == "x@0"


def test_figures_in_one_line() -> None:
    assert figures_text({"busi_val": {"dice": 0.7123, "macro_auc": 0.9}, "n": 78}) == (
        "busi_val: Dice 0.712, Macro AUC 0.900, on 78 images"
    )
    assert figures_text({"dice": 0.5}) == "Dice 0.500"
    assert figures_text({}) == ""


def test_figures_of_an_evaluate_report_come_first_when_they_are_test_figures() -> None:
    report = {
        "n_cases": 78,
        "segmentation": {"dice_lesion": 0.715, "iou_lesion": 0.621},
        "classification": {"accuracy": 0.705, "macro_f1": 0.686, "macro_auc": 0.833},
    }
    text = figures_text({"busi_val": {"dice": 0.673, "n": 78}, "busi_test": report})
    assert text == (
        "busi_test: Dice 0.715, IoU 0.621, Accuracy 0.705, Macro F1 0.686, Macro AUC 0.833, "
        "on 78 images; busi_val: Dice 0.673, on 78 images"
    )
