"""Activating a model while a real `fame-node run` processes files; refusing bad bundles.

Two tiny real models (MAU-Net width 4, different seeds) are exported and signed with a
federation key made by `fame-node models keygen` / `sign`. The node starts on 1.0.0 with
signatures required; files stream into the inbox while `fame-node models activate` switches
it to 1.1.0. Every file must be processed once, each job by exactly one model, and every job
started after the switch by the new one. Then a bundle with a flipped byte and one whose
manifest was changed after signing are refused by the CLI, and the node keeps its model.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from appliance.phantom import PhantomSpec, make_phantom
from appliance.phantom_dicom import write_phantom_png
from tests.appliance.models.bundles import flip_byte, real_bundle, sign_bundle, write_test_bundle
from tests.e2e.nodeutil import (
    jobs,
    node_env,
    results,
    run_cli,
    start_node,
    stop_node,
    wait_for,
)

pytest.importorskip("torch", reason="exporting the test models needs torch (the 'train' extra)")

OLD, NEW = "tiny@1.0.0", "tiny@1.1.0"
N_STREAM = 45  # dropped at a steady pace while the model is activated
N_AFTER = 10  # dropped once the service has switched


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fame-node-swap-"))
    (path / "node" / "inbox").mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _events(db: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM model_events ORDER BY id")]
    finally:
        conn.close()


def _status(node: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(
            (node / "work" / "service-status.json").read_text(encoding="utf-8")
        )
    except (OSError, json.JSONDecodeError):
        return {}
    return data


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _stage(folder: Path, first: int, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for seed in range(first, first + n):
        path = folder / f"case_{seed:03d}.png"
        write_phantom_png(path, make_phantom(PhantomSpec(height=240, width=320, seed=seed)))
        out.append(path)
    return out


def _drop(files: list[Path], inbox: Path, pace_s: float = 0.0) -> None:
    for f in files:
        f.replace(inbox / f.name)  # a rename: the file appears complete
        time.sleep(pace_s)


def test_activation_while_processing_then_bad_bundles_are_refused(root: Path) -> None:
    node = root / "node"
    inbox, db = node / "inbox", node / "fame-node.sqlite3"
    bundles = root / "bundles"
    v1 = real_bundle(bundles / "v1", seed=1, version="1.0.0")
    v2 = real_bundle(bundles / "v2", seed=2, version="1.1.0")
    env = node_env(
        node,
        FAME_NODE_MODELS__BUNDLE=str(v1),
        FAME_NODE_MODELS__TRUSTED_KEYS=json.dumps([str(root / "keys" / "fed.pub")]),
        FAME_NODE_MODELS__REQUIRE_SIGNATURE="true",
        FAME_NODE_MODELS__POLL_INTERVAL_S="0.5",
    )
    keygen = run_cli(env, "models", "keygen", "--out", str(root / "keys" / "fed"))
    assert keygen.returncode == 0, keygen.stderr
    for bundle in (v1, v2):
        signed = run_cli(
            env, "models", "sign", "--key", str(root / "keys" / "fed.key"), str(bundle)
        )
        assert signed.returncode == 0 and "signed" in signed.stdout, signed.stderr
    stream = _stage(root / "staging", 0, N_STREAM)
    after = _stage(root / "staging", N_STREAM, N_AFTER)

    proc = start_node(env, root / "node.log")
    try:
        wait_for(lambda: _status(node).get("model") == OLD, 60, "the node to start on 1.0.0")
        dropper = threading.Thread(target=_drop, args=(stream, inbox, 0.08))
        dropper.start()
        wait_for(lambda: sum(j["status"] == "done" for j in jobs(db)) >= 8, 60, "8 files done")
        activate = run_cli(
            env, "models", "activate", str(v2), "--actor", "alice", "--reason", "e2e swap"
        )
        assert activate.returncode == 0, activate.stdout + activate.stderr
        assert f"switched to {NEW}" in activate.stdout, activate.stdout
        switched = _status(node)
        assert switched["model"] == NEW
        swap_at = _time(switched["model_since"])
        dropper.join(60)
        _drop(after, inbox)
        total = N_STREAM + N_AFTER
        wait_for(
            lambda: sum(j["status"] == "done" for j in jobs(db)) >= total, 120, "every file done"
        )

        # Bundles that must be refused: a flipped byte, and a manifest changed after signing.
        flipped = write_test_bundle(
            bundles / "flipped", v2 / "model.onnx", name="tiny", version="1.2.0"
        )
        sign_bundle(flipped, root / "keys" / "fed.key")
        flip_byte(flipped / "model.onnx")
        forged = write_test_bundle(
            bundles / "forged", v2 / "model.onnx", name="tiny", version="1.3.0"
        )
        sign_bundle(forged, root / "keys" / "fed.key")
        manifest = forged / "manifest.json"
        manifest.write_text(manifest.read_text().replace('"dice": 0.5', '"dice": 0.99'))
        for bad, words in (
            (flipped, "checksum mismatch for model.onnx"),
            (forged, "bad signature"),
        ):
            out = run_cli(env, "models", "activate", str(bad), "--actor", "mallory")
            assert out.returncode != 0, out.stdout
            assert words in out.stderr, out.stderr
            assert f"the active model stays {NEW}" in out.stderr, out.stderr
        time.sleep(1.5)  # three polls: a refused bundle must not reach the service
        late = _stage(root / "staging", total, 3)
        _drop(late, inbox)
        wait_for(
            lambda: sum(j["status"] == "done" for j in jobs(db)) >= total + 3, 60, "late files"
        )
        assert proc.poll() is None, "the node died"
        assert _status(node)["model"] == NEW
    finally:
        code = stop_node(proc)
    log = (root / "node.log").read_text(errors="replace")
    assert code == 0, log[-3000:]

    # Every file processed exactly once.
    all_jobs = jobs(db)
    names = sorted(Path(j["path"]).name for j in all_jobs)
    assert names == sorted(p.name for p in [*stream, *after, *late]), names
    assert all(j["status"] == "done" for j in all_jobs), [
        (j["path"], j["status"], j["reason"]) for j in all_jobs if j["status"] != "done"
    ]
    # Each job's results name one version, the job's own.
    by_job: dict[int, set[str]] = {}
    for r in results(db):
        by_job.setdefault(r["job_id"], set()).add(r["model_version"])
    assert set(by_job) == {j["id"] for j in all_jobs}
    for j in all_jobs:
        assert by_job[j["id"]] == {j["model_version"]}, j
    versions = [j["model_version"] for j in all_jobs]
    assert OLD in versions and NEW in versions, versions
    # The swap happened while files were being processed ...
    started = [_time(j["started_at"]) for j in all_jobs]
    assert min(started) < swap_at < max(started)
    # ... and every job that started after it ran on the new model.
    for j in all_jobs:
        if _time(j["started_at"]) > swap_at:
            assert j["model_version"] == NEW, j
    late_names = {p.name for p in [*after, *late]}
    assert {j["model_version"] for j in all_jobs if Path(j["path"]).name in late_names} == {NEW}

    events = [(e["action"], e["model"], e["actor"]) for e in _events(db)]
    assert events[:2] == [("installed", OLD, "install"), ("activated", OLD, "install")]
    assert ("activated", NEW, "alice") in events
    refused = [e for e in _events(db) if e["action"] == "refused"]
    assert [(e["model"], e["actor"]) for e in refused] == [
        ("tiny@1.2.0", "mallory"),
        ("tiny@1.3.0", "mallory"),
    ]
    assert "checksum mismatch" in refused[0]["reason"]
    assert "bad signature" in refused[1]["reason"]
    assert events[-1] == ("refused", "tiny@1.3.0", "mallory")  # nothing activated after
    assert "model swapped: tiny@1.0.0 -> tiny@1.1.0" in log
