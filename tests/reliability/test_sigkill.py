"""SIGKILL three times during a batch of 200 files: each file processed exactly once.

200 distinct images are renamed into a live node's inbox at once. When 20 %, 45 % and 70 %
of them are done (the node busy: jobs running, more queued, files not yet taken), the node
is killed with SIGKILL (a power cut, the OOM killer) and started again. Measured per
restart: the seconds until the service is ready (its status file written) and until it
finishes its first job again; what was in hand at the kill. At the end every file must be
done exactly once (`verify.exactly_once`): no job twice, no results row twice, every
results folder present and matching the store, nothing temporary left behind.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from appliance.store.db import from_db_time
from tests.reliability.figures import out_dir, rounded, write_figures
from tests.reliability.harness import LiveNode, drop, job_counts, wait_until
from tests.reliability.inputs import Inputs
from tests.reliability.verify import exactly_once, sha256

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

N_FILES = int(os.environ.get("FAME_RELIABILITY_KILL_FILES", "200"))
KILL_AT = (0.20, 0.45, 0.70)  # fraction of the batch done at each SIGKILL


@pytest.mark.timeout(1800)
def test_sigkill_three_times_during_a_batch(tmp_path: Path) -> None:
    started = datetime.now(UTC)
    load0 = list(os.getloadavg())
    inputs = Inputs.create(tmp_path / "staging")
    staged = [inputs.make(i) for i in range(N_FILES)]
    expected = {p.name: sha256(p) for p in staged}
    node = LiveNode(tmp_path / "node")
    kills: list[dict[str, object]] = []
    in_hand_ids: list[list[int]] = []
    try:
        first_ready_s = node.start()
        t0 = time.monotonic()
        for p in staged:
            drop(p, node.inbox)
        for fraction in KILL_AT:
            target = int(N_FILES * fraction)
            wait_until(
                lambda t=target: job_counts(node.db).get("done", 0) >= t,
                900,
                f"{target} done",
                0.01,
            )
            node.kill()
            at_kill = job_counts(node.db)
            in_hand = [j for j in node.jobs() if j["status"] == "running"]
            restart_at = datetime.now(UTC)
            ready_s = node.start()
            t_restart = time.monotonic() - ready_s

            def done_after_restart(at: datetime = restart_at) -> bool:
                return any(
                    j["finished_at"] and from_db_time(str(j["finished_at"])) > at
                    for j in node.jobs()
                    if j["status"] == "done"
                )

            wait_until(done_after_restart, 300, "a job done after the restart", 0.02)
            in_hand_ids.append([int(str(j["id"])) for j in in_hand])
            kills.append(
                {
                    "done_fraction": fraction,
                    "at_kill": at_kill,
                    "taken_into_queue": sum(at_kill.values()),
                    "running_at_kill": len(in_hand),
                    "ready_s": rounded(ready_s, 2),
                    "first_done_s": rounded(time.monotonic() - t_restart, 2),
                    "requeued_and_done": len(in_hand),
                }
            )
        wait_until(
            lambda: job_counts(node.db).get("done", 0) >= N_FILES, 900, "every file done", 0.1
        )
        total_s = time.monotonic() - t0
        code, stop_s = node.terminate()
    finally:
        node.ensure_stopped()
    assert code == 0, node.tail()

    final = node.jobs()
    counts = exactly_once(node.root, node.db, final, expected)
    attempts = {int(str(j["id"])): int(str(j["attempts"])) for j in final}
    interrupted = {i for ids in in_hand_ids for i in ids}
    # A job cut off by a kill is retried (attempt 2 or more); it is not lost or doubled.
    assert all(attempts[i] >= 2 for i in interrupted), {i: attempts[i] for i in interrupted}
    assert sum(1 for k in kills if k["running_at_kill"]) >= 2, (
        f"the kills did not catch jobs in hand, the test proves little: {kills}"
    )
    figures = {
        "_loadavg_at_start": load0,
        "inputs": inputs.source,
        "files": N_FILES,
        "workers": 2,
        "kills": kills,
        "first_start_ready_s": rounded(first_ready_s, 2),
        "total_s": rounded(total_s, 1),
        "stop_s": rounded(stop_s, 2),
        "jobs_interrupted": len(interrupted),
        "check": counts,
    }
    write_figures(
        out_dir(tmp_path / "figures"),
        "sigkill",
        command=".venv/bin/pytest -m 'reliability and slow' tests/reliability/test_sigkill.py",
        figures=figures,
        started=started,
    )
