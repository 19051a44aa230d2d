from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.store.model_events import ModelEventStore


def test_history_is_newest_first_with_figures(tmp_path: Path) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    ticks = iter(range(10))
    store = ModelEventStore(tmp_path / "db", clock=lambda: t0 + timedelta(minutes=next(ticks)))
    store.record("m@1", "installed", "install", bundle_path=tmp_path, figures={"dice": 0.7})
    store.record("m@1", "activated", "alice", reason="first model")
    store.record("m@2", "refused", "federation", reason="checksum mismatch for model.onnx")
    h = store.history()
    assert [e.action for e in h] == ["refused", "activated", "installed"]
    assert h[2].figures == {"dice": 0.7} and h[2].bundle_path == tmp_path
    assert h[0].at - h[2].at == timedelta(minutes=2)
    assert h[1].actor == "alice" and h[1].reason == "first model"


def test_bad_action_or_missing_actor_is_refused(tmp_path: Path) -> None:
    store = ModelEventStore(tmp_path / "db")
    with pytest.raises(ValueError, match="unknown model action"):
        store.record("m@1", "deployed", "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs an actor"):
        store.record("m@1", "activated", "")
    assert store.history() == []
