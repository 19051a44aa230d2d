"""What "nothing lost, nothing twice" means after a fault, checked on the node's own record.

For a set of dropped files: one job per file and per content (sha256), every one `done`,
one results row per analysed frame and no row twice, every job's results folder present
with its mask, overlay and result.json (naming that job, hashing that content), no results
folder the store does not know, and no temporary file left anywhere under results/.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from tests.reliability.harness import by_status


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _results_rows(db: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [
            dict(r) for r in conn.execute("SELECT job_id, frame_index, result_dir FROM results")
        ]
    finally:
        conn.close()


def exactly_once(
    root: Path, db: Path, jobs: list[dict[str, Any]], expected: dict[str, str]
) -> dict[str, Any]:
    """Check the record against `expected` (file name -> sha256 of what was dropped);
    returns the counts. Raises AssertionError listing every discrepancy."""
    problems: list[str] = []
    names = [Path(str(j["path"])).name for j in jobs]
    missing = sorted(set(expected) - set(names))
    extra = sorted(set(names) - set(expected))
    twice = sorted({n for n in names if names.count(n) > 1})
    if missing:
        problems.append(f"{len(missing)} file(s) without a job, e.g. {missing[:3]}")
    if extra:
        problems.append(f"{len(extra)} job(s) for files never dropped, e.g. {extra[:3]}")
    if twice:
        problems.append(f"{len(twice)} file(s) with more than one job, e.g. {twice[:3]}")
    shas = [str(j["sha256"]) for j in jobs]
    if len(set(shas)) != len(shas):
        problems.append(f"{len(shas) - len(set(shas))} content(s) with more than one job")
    wrong_sha = [n for j, n in zip(jobs, names, strict=True) if expected.get(n) != j["sha256"]]
    if wrong_sha:
        problems.append(
            f"{len(wrong_sha)} job(s) hashing other bytes than dropped: {wrong_sha[:3]}"
        )
    statuses = by_status(jobs)
    if statuses != {"done": len(expected)}:
        problems.append(f"job statuses {statuses}, expected all {len(expected)} done")

    rows = _results_rows(db)
    keys = [(r["job_id"], r["frame_index"]) for r in rows]
    if len(set(keys)) != len(keys):
        problems.append(f"{len(keys) - len(set(keys))} duplicate results row(s)")
    job_ids = {int(j["id"]) for j in jobs}
    with_rows = {int(r["job_id"]) for r in rows}
    if with_rows != job_ids:
        problems.append(
            f"results rows for {len(with_rows)} jobs, {len(job_ids)} jobs: "
            f"without rows {sorted(job_ids - with_rows)[:5]}"
        )
    dirs_db = {Path(str(r["result_dir"])).resolve() for r in rows if r["result_dir"]}
    dirs_disk = {p.resolve() for p in (root / "results").glob("job-*") if p.is_dir()}
    if dirs_disk - dirs_db:
        problems.append(
            f"results folders the store does not know: {sorted(dirs_disk - dirs_db)[:3]}"
        )
    by_id = {int(j["id"]): j for j in jobs}
    for d in sorted(dirs_db):
        for needed in ("frame_000_mask.png", "frame_000_overlay.png", "result.json"):
            if not (d / needed).is_file() or (d / needed).stat().st_size == 0:
                problems.append(f"{d.name}/{needed} missing or empty")
        try:
            record = json.loads((d / "result.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems.append(f"{d.name}/result.json unreadable: {exc}")
            continue
        job = by_id.get(int(record["job_id"]))
        if job is None or record["source"]["sha256"] != job["sha256"]:
            problems.append(f"{d.name}/result.json names job {record['job_id']} or other bytes")
    leftovers = [p for p in (root / "results").rglob("*") if ".tmp" in p.name]
    if leftovers:
        problems.append(f"{len(leftovers)} temporary file(s) left under results/")
    if problems:
        raise AssertionError("exactly-once violated:\n  " + "\n  ".join(problems))
    return {
        "files": len(expected),
        "jobs": len(jobs),
        "done": statuses.get("done", 0),
        "results_rows": len(rows),
        "results_folders": len(dirs_disk),
        "duplicate_rows": 0,
        "max_attempts": max((int(j["attempts"]) for j in jobs), default=0),
    }
