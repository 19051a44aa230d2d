"""verify.exactly_once on a real store file: it passes a clean record and names each kind
of damage (fast, default run)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from appliance.store.jobs import JobQueue
from tests.reliability.verify import exactly_once

NOW = "2026-12-01T10:00:00.000000Z"


def _node(root: Path, n: int = 2) -> tuple[Path, dict[str, str]]:
    db = root / "fame-node.sqlite3"
    with JobQueue(db):
        pass  # creates the schema
    expected = {}
    conn = sqlite3.connect(db)
    with conn:
        for i in range(1, n + 1):
            sha = f"{i:064x}"
            expected[f"in_{i}.png"] = sha
            folder = root / "results" / f"job-{i:06d}"
            folder.mkdir(parents=True)
            for name in ("frame_000_mask.png", "frame_000_overlay.png"):
                (folder / name).write_bytes(b"\x89PNG data")
            record = {"job_id": i, "source": {"sha256": sha}}
            (folder / "result.json").write_text(json.dumps(record))
            conn.execute(
                "INSERT INTO jobs (id, path, sha256, status, attempts, created_at, updated_at)"
                " VALUES (?, ?, ?, 'done', 1, ?, ?)",
                (i, str(root / "inbox" / f"in_{i}.png"), sha, NOW, NOW),
            )
            conn.execute(
                "INSERT INTO results (job_id, frame_index, probabilities, flags, result_dir,"
                " created_at) VALUES (?, 0, '[]', '[]', ?, ?)",
                (i, str(folder), NOW),
            )
    conn.close()
    return db, expected


def _jobs(db: Path) -> list[dict[str, object]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM jobs ORDER BY id")]
    finally:
        conn.close()


def test_a_clean_record_passes(tmp_path: Path) -> None:
    db, expected = _node(tmp_path)
    counts = exactly_once(tmp_path, db, _jobs(db), expected)
    assert counts["done"] == 2 and counts["results_rows"] == 2


def test_each_kind_of_damage_is_named(tmp_path: Path) -> None:
    db, expected = _node(tmp_path)
    (tmp_path / "results" / "job-000001" / "frame_000_mask.png").unlink()
    shutil.copytree(tmp_path / "results" / "job-000002", tmp_path / "results" / "job-000099")
    (tmp_path / "results" / "job-000002" / "x.png.tmp").write_bytes(b"")
    rows = _jobs(db)
    rows.append({**rows[1], "id": 3})  # the second file's content queued twice
    expected["never_dropped.png"] = "0" * 64
    with pytest.raises(AssertionError) as info:
        exactly_once(tmp_path, db, rows, expected)
    text = str(info.value)
    for needed in (
        "job-000001/frame_000_mask.png missing",
        "results folders the store does not know",
        "temporary file(s) left",
        "more than one job",
        "1 file(s) without a job",
    ):
        assert needed in text, text
