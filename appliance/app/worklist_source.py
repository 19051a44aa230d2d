"""The worklist's entries, read from the node's SQLite store.

The GUI and the service may be separate processes over the same file: every read here is
its own transaction, so it sees what the service committed last (WAL: reading never
waits for the service's writes). `change_token` is two aggregate queries over small
tables; the GUI polls it every second and reloads only when it changed.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Hashable
from pathlib import Path

from appliance.app.display import study_date
from appliance.app.worklist import FrameSummary, WorklistEntry
from appliance.store.db import Database, from_db_time
from appliance.store.reviews import current_reviews

DEFAULT_MAX_ENTRIES = 10_000


class StoreWorklistSource:
    """`WorklistSource` over the store at `db_path` (the newest `max_entries` jobs)."""

    def __init__(self, db_path: Path, *, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self._db = Database(db_path)
        self._max = max_entries

    def change_token(self) -> Hashable:
        with self._db.read() as conn:
            jobs = conn.execute("SELECT COUNT(*), MAX(updated_at) FROM jobs").fetchone()
            reviews = conn.execute(
                "SELECT COUNT(*), COALESCE(MAX(id), 0), COUNT(undone_at) FROM reviews"
            ).fetchone()
        return (int(jobs[0]), jobs[1], int(reviews[0]), int(reviews[1]), int(reviews[2]))

    def load(self) -> list[WorklistEntry]:
        with self._db.read() as conn:
            jobs = conn.execute(
                """SELECT j.id, j.path, j.status, j.reason, j.duplicate_of, j.created_at,
                          j.model_version, i.patient_name, i.patient_id, i.study_date,
                          i.modality, i.source_format, i.n_frames_total
                   FROM jobs j LEFT JOIN images i ON i.job_id = j.id
                   ORDER BY j.id DESC LIMIT ?""",
                (self._max,),
            ).fetchall()
            if not jobs:
                return []
            oldest = min(int(j["id"]) for j in jobs)
            results = conn.execute(
                "SELECT job_id, frame_index, diagnosis, confidence, probabilities, flags, "
                "backend FROM results WHERE job_id >= ? ORDER BY job_id, frame_index",
                (oldest,),
            ).fetchall()
            reviews = {(r.job_id, r.frame_index): r for r in current_reviews(conn)}
        frames: dict[int, list[FrameSummary]] = {}
        backends: dict[int, str | None] = {}
        for r in results:
            review = reviews.get((r["job_id"], r["frame_index"]))
            frames.setdefault(r["job_id"], []).append(
                FrameSummary(
                    frame_index=r["frame_index"],
                    diagnosis=r["diagnosis"],
                    confidence=r["confidence"],
                    probabilities=json.loads(r["probabilities"]),
                    flags=tuple(json.loads(r["flags"])),
                    decision=None if review is None else review.decision,
                    reviewed_diagnosis=None if review is None else review.diagnosis,
                )
            )
            backends[r["job_id"]] = r["backend"]
        return [_entry(j, frames.get(j["id"], []), backends.get(j["id"])) for j in jobs]

    def close(self) -> None:
        self._db.close()


def _entry(row: sqlite3.Row, frames: list[FrameSummary], backend: str | None) -> WorklistEntry:
    return WorklistEntry(
        job_id=row["id"],
        path=Path(row["path"]),
        status=row["status"],
        received=from_db_time(row["created_at"]),
        reason=row["reason"],
        duplicate_of=row["duplicate_of"],
        patient_name=row["patient_name"],
        patient_id=row["patient_id"],
        study_date=study_date(row["study_date"]),
        modality=row["modality"],
        source_format=row["source_format"],
        n_frames_total=row["n_frames_total"],
        frames=tuple(frames),
        model_version=row["model_version"],
        backend=backend,
    )
