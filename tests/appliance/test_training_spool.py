"""Kept training copies (`appliance.federation.training_spool`): a case reviewed after its
inbox file is gone is still in the local training set; the retention and the bound.

Real pipeline (`tests.appliance.pipelineutil`), real store and reviews, real files.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from appliance.config import load_config
from appliance.federation.local_data import load_local_data
from appliance.federation.training_spool import (
    CASES_FOLDER,
    folder_bytes,
    keep_for_review,
    prune,
)
from appliance.phantom import PhantomSpec, make_phantom
from appliance.phantom_dicom import write_phantom_png
from appliance.store.reviews import ReviewStore
from tests.appliance.pipelineutil import node_parts, process_file

FEDERATION_ON = {
    "FAME_NODE_FEDERATION__ENABLED": "true",
    "FAME_NODE_FEDERATION__SUPERLINK": "127.0.0.1:9",
    "FAME_NODE_FEDERATION__INSECURE": "true",
}


def _reviewed_then_removed(tmp_path: Path, env: dict[str, str]) -> tuple[int, Path, Path]:
    """Two PNGs analysed by the node; both confirmed after their inbox files were removed."""
    root = tmp_path / "node"
    parts = node_parts(root, workers=1, **env)
    jobs = []
    try:
        for i in range(2):
            path = tmp_path / f"scan-{i}.png"
            write_phantom_png(path, make_phantom(PhantomSpec(height=128, width=160, seed=i)))
            jobs.append((process_file(parts, path), path))
    finally:
        parts.close()
    config = load_config(env={"FAME_NODE_PATHS__ROOT": str(root), **env})
    for _, path in jobs:
        path.unlink()  # the PACS cleaned its export folder before the federation's first load
    with ReviewStore(config.database_path) as reviews:
        for job_id, _ in jobs:
            reviews.confirm(job_id, 0, "dr. test")
    return len(jobs), config.folder("work") / CASES_FOLDER, config.folder("work") / "spool"


def test_a_reviewed_case_whose_inbox_file_is_gone_is_still_trained_on(tmp_path: Path) -> None:
    n, cases, spool = _reviewed_then_removed(tmp_path, FEDERATION_ON)
    assert not any(spool.glob("[0-9a-f]*"))  # the spool copies were released as before
    assert len(list(cases.iterdir())) == n  # ... and kept for training, named by sha256
    for kept in cases.iterdir():
        assert hashlib.sha256(kept.read_bytes()).hexdigest() == kept.name
    config = load_config(env={"FAME_NODE_PATHS__ROOT": str(tmp_path / "node"), **FEDERATION_ON})
    data = load_local_data(config)
    assert len(data.train) + len(data.heldout) == n, data.skipped
    assert data.skipped == {}
    assert len(list(cases.iterdir())) == n  # in the training set: kept


def test_without_the_federation_nothing_is_kept_and_the_case_is_lost(tmp_path: Path) -> None:
    n, cases, _ = _reviewed_then_removed(tmp_path, {})
    assert not cases.exists()
    data = load_local_data(load_config(env={"FAME_NODE_PATHS__ROOT": str(tmp_path / "node")}))
    assert len(data.train) + len(data.heldout) == 0
    assert data.skipped == {"its bytes are gone or changed since it was analysed": n}


def _copy(folder: Path, content: bytes, age_s: float, now: float) -> str:
    sha = hashlib.sha256(content).hexdigest()
    path = folder / sha
    path.write_bytes(content)
    os.utime(path, (now - age_s, now - age_s))
    return sha


def test_retention_review_window_then_the_bound_training_cases_last(tmp_path: Path) -> None:
    now = 1_000_000_000.0
    day = 86400.0
    old_reviewed = _copy(tmp_path, b"a" * 100, 60 * day, now)
    old_unreviewed = _copy(tmp_path, b"b" * 100, 31 * day, now)
    recent = [_copy(tmp_path, bytes([i]) * 100, i * day, now) for i in range(1, 5)]
    report = prune(tmp_path, {old_reviewed, recent[3]}, now=now)
    assert report.expired == 1 and not (tmp_path / old_unreviewed).exists()
    assert (tmp_path / old_reviewed).exists()  # in the training set: kept past the window
    # Over a bound of 300 bytes: the unreviewed recent copies go first, oldest first.
    report = prune(tmp_path, {old_reviewed, recent[3]}, now=now, max_bytes=300)
    assert (report.over_bound, report.training_lost, report.kept_bytes) == (2, 0, 300)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [old_reviewed, recent[0], recent[3]]
    )
    # Still over: a training copy goes too, the oldest one, and it is counted.
    report = prune(tmp_path, {old_reviewed, recent[3]}, now=now, max_bytes=100)
    assert (report.over_bound, report.training_lost) == (2, 1)
    assert [p.name for p in tmp_path.iterdir()] == [recent[3]]


def test_keep_links_the_copy_and_enforces_the_bound(tmp_path: Path) -> None:
    spool, cases = tmp_path / "spool", tmp_path / "cases"
    spool.mkdir()
    shas = []
    for i in range(3):
        content = bytes([i]) * 1000
        sha = hashlib.sha256(content).hexdigest()
        (spool / sha).write_bytes(content)
        kept = keep_for_review(spool / sha, sha, cases, lambda: shas[:1], max_bytes=2500)
        assert kept is not None and kept.read_bytes() == content
        shas.append(sha)
        os.utime(kept, (1e9 + i, 1e9 + i))
    assert folder_bytes(cases) == 2000  # the third went over: the oldest not-reviewed went
    assert sorted(p.name for p in cases.iterdir()) == sorted([shas[0], shas[2]])
