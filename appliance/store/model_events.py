"""The history of the models this node ran, in the ``model_events`` table.

Every change of the node's model is one row: a bundle ``installed``, ``activated``,
``refused`` (bad checksum or signature, or worse figures), ``rolled_back`` to, or
``removed``; with who or what did it (a user name, ``federation``, ``install``), why, and
the figures measured for it. The models panel of the GUI and ``fame-node models list``
read it; the model registry writes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from appliance.store.audit_events import record_model_event
from appliance.store.db import (
    StoreBase,
    from_db_time,
    to_db_time,
)

ModelAction = Literal["installed", "activated", "refused", "rolled_back", "removed"]
ACTIONS: tuple[str, ...] = ("installed", "activated", "refused", "rolled_back", "removed")


@dataclass(frozen=True)
class ModelEvent:
    id: int
    at: datetime
    model: str  # name@version
    bundle_path: Path | None
    action: ModelAction
    actor: str
    reason: str | None
    figures: dict[str, Any] = field(default_factory=dict)


class ModelEventStore(StoreBase):
    """Appends to and reads the model history; safe to share between threads."""

    def record(
        self,
        model: str,
        action: ModelAction,
        actor: str,
        *,
        reason: str | None = None,
        bundle_path: Path | None = None,
        figures: dict[str, Any] | None = None,
    ) -> ModelEvent:
        if action not in ACTIONS:
            raise ValueError(f"unknown model action {action!r}; expected one of {ACTIONS}")
        if not actor:
            raise ValueError("a model event needs an actor (a user name or 'federation')")
        now = to_db_time(self._clock())
        with self._db.write() as conn:
            cur = conn.execute(
                "INSERT INTO model_events (at, model, bundle_path, action, actor, reason, figures)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    now,
                    model,
                    None if bundle_path is None else str(bundle_path),
                    action,
                    actor,
                    reason,
                    json.dumps(figures or {}),
                ),
            )
            row = conn.execute(
                "SELECT * FROM model_events WHERE id = ?", (cur.lastrowid,)
            ).fetchone()
            event = _event(row)
            record_model_event(  # committed with the history row, or not at all
                conn,
                event_id=event.id,
                model=model,
                action=action,
                actor=actor,
                with_reason=bool(reason),
                figures=event.figures,
                at=now,
            )
        return event

    def history(self, limit: int = 200) -> list[ModelEvent]:
        """Newest first."""
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT * FROM model_events ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [_event(r) for r in rows]


def _event(row: Any) -> ModelEvent:
    return ModelEvent(
        id=row["id"],
        at=from_db_time(row["at"]),
        model=row["model"],
        bundle_path=None if row["bundle_path"] is None else Path(row["bundle_path"]),
        action=row["action"],
        actor=row["actor"],
        reason=row["reason"],
        figures=json.loads(row["figures"]),
    )
