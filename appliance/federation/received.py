"""The global models a node received, as files and as decisions.

Files: after a run's last round the ClientApp keeps the final signed global model in
``<paths.work>/federation/state/received/run-R-round-N.safetensors`` with
``run-R-round-N.json`` beside it (run, round, digest, signature, signer, and what the
coordinator said of the run: strategy, nodes) (`trainer.federated.node.Node.keep_global`).
`received_files` lists them. Nothing in the files is trusted: the
deployment (`appliance.federation.deploy`) re-verifies every one.

Decisions: `ReceivedModelStore` over the ``federation_models`` table (schema v6, append
only): one row per received model, ``deployed`` (with the bundle version it became) or
``refused`` with the reason, and the held-out figures of both models. Status, the GUI's
federation panel and the deployment read it.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from appliance.store.db import StoreBase, from_db_time

RECEIVED_FOLDER = Path("federation") / "state" / "received"  # under paths.work
_STEM = re.compile(r"^run-(\d{1,20})-round-(\d{1,9})$")

Decision = Literal["deployed", "refused"]
DECISIONS: tuple[str, ...] = ("deployed", "refused")


@dataclass(frozen=True)
class ReceivedFile:
    """One kept global model: its two files and the run / round its name gives."""

    stem: str
    run_id: str
    model_round: int
    weights: Path
    record: Path


@dataclass(frozen=True)
class ModelDecision:
    id: int
    at: datetime
    run_id: str
    model_round: int
    digest: str
    decision: Decision
    reason: str
    model: str | None  # the bundle version exported (deployed) or that would have been
    figures: dict[str, Any] = field(default_factory=dict)


def received_files(work: Path) -> list[ReceivedFile]:
    """The kept global models under `work` (paths.work), oldest run and round first."""
    folder = work / RECEIVED_FOLDER
    if not folder.is_dir():
        return []
    found = []
    for weights in folder.glob("*.safetensors"):
        match = _STEM.match(weights.stem)
        if match is None:
            continue
        found.append(
            ReceivedFile(
                weights.stem,
                match.group(1),
                int(match.group(2)),
                weights,
                weights.with_suffix(".json"),
            )
        )
    return sorted(found, key=lambda f: (int(f.run_id), f.model_round))


class ReceivedModelStore(StoreBase):
    """Appends and reads deployment decisions; thread-safe."""

    def record(
        self,
        run_id: str,
        model_round: int,
        digest: str,
        decision: Decision,
        reason: str,
        *,
        model: str | None = None,
        figures: dict[str, Any] | None = None,
    ) -> ModelDecision:
        """Record the decision on one received model (once: `decided` says whether)."""
        if decision not in DECISIONS:
            raise ValueError(f"decision {decision!r}; expected one of {DECISIONS}")
        if not reason:
            raise ValueError("a deployment decision needs its reason")
        with self._db.write() as conn:
            cur = conn.execute(
                "INSERT INTO federation_models (at, run_id, model_round, digest, decision, "
                "reason, model, figures) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    self._now(),
                    str(run_id),
                    int(model_round),
                    digest,
                    decision,
                    reason,
                    model,
                    json.dumps(figures or {}),
                ),
            )
            row = conn.execute(
                "SELECT * FROM federation_models WHERE id = ?", (cur.lastrowid,)
            ).fetchone()
        return _decision(row)

    def decided(self, run_id: str, model_round: int) -> ModelDecision | None:
        """The newest decision on the model of this run and round, if any."""
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT * FROM federation_models WHERE run_id = ? AND model_round = ? "
                "ORDER BY id DESC LIMIT 1",
                (str(run_id), int(model_round)),
            ).fetchone()
        return None if row is None else _decision(row)

    def decisions(self, limit: int = 200) -> list[ModelDecision]:
        """Newest first."""
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT * FROM federation_models ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [_decision(r) for r in rows]


def _decision(row: sqlite3.Row) -> ModelDecision:
    return ModelDecision(
        id=row["id"],
        at=from_db_time(row["at"]),
        run_id=row["run_id"],
        model_round=row["model_round"],
        digest=row["digest"],
        decision=row["decision"],
        reason=row["reason"],
        model=row["model"],
        figures=json.loads(row["figures"]),
    )


__all__ = [
    "RECEIVED_FOLDER",
    "ModelDecision",
    "ReceivedFile",
    "ReceivedModelStore",
    "received_files",
]
