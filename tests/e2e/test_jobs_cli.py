"""`fame-node jobs list | retry` as IT staff run them: the real CLI on a real store."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from appliance.store.jobs import JobQueue, JobStatus
from tests.e2e.nodeutil import node_env, run_cli


def _store_with_a_failed_job(root: Path) -> tuple[int, int]:
    root.mkdir(parents=True, exist_ok=True)
    with JobQueue(root / "fame-node.sqlite3") as queue:
        failed = queue.enqueue(root / "inbox" / "DOE^JANE.png", hashlib.sha256(b"a").hexdigest(), 1)
        done = queue.enqueue(root / "inbox" / "b.png", hashlib.sha256(b"b").hexdigest(), 1)
        queue.claim_next()
        queue.claim_next()
        queue.mark_failed(failed.id, "internal_error", "internal error while processing")
        queue.mark_done(done.id, "tiny@1.0.0")
    return failed.id, done.id


def test_jobs_list_and_retry(tmp_path: Path) -> None:
    root = tmp_path / "node"
    failed, done = _store_with_a_failed_job(root)
    env = node_env(root)
    listed = run_cli(env, "jobs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["id"]: r for r in map(json.loads, listed.stdout.splitlines())}
    assert rows[failed]["status"] == "failed" and rows[done]["status"] == "done"
    assert rows[failed]["reason"] == "internal error while processing"

    refused = run_cli(env, "jobs", "retry", str(done))
    assert refused.returncode != 0
    assert "expected 'failed'" in refused.stderr + refused.stdout

    retried = run_cli(env, "jobs", "retry", "--all")
    assert retried.returncode == 0, retried.stderr
    assert f"job {failed} queued again" in retried.stdout
    with JobQueue(root / "fame-node.sqlite3") as queue:
        job = queue.get(failed)
    assert job.status is JobStatus.QUEUED and job.attempts == 0 and job.reason is None
    again = run_cli(env, "jobs", "retry", "--all")
    assert "no failed jobs to retry" in again.stdout
