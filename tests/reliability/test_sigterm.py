"""SIGTERM while busy (systemctl stop, a reboot): what happens to the jobs in hand.

A live node gets the 120-frame cine of pydicom-data (16 frames analysed, a DICOM SEG per
frame: seconds of work) and then a batch of images; SIGTERM comes while the cine's job is
running and more are queued. Measured: the shutdown time (SIGTERM -> the process gone),
the jobs in hand at the signal and what became of each (finished within the 60 s grace, or
put back in the queue not counted as an attempt), what stayed queued; then a restart and
the time until every file is done, exactly once.

The second run (`slow`) holds its one worker past the grace with a legitimately slow input:
that job must go back to the queue, its attempt not counted, the process gone right after
the grace, and the job done after the restart. Its decoding child should be gone too: today
it is not (an expected failure, with the figure, until the service stops it).
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from appliance.io.sample_data import ultrasound_sample_files
from tests.e2e.hostile.images import jpeg_scan_bomb
from tests.e2e.hostile.memwatch import descendants
from tests.reliability.figures import out_dir, rounded, write_figures
from tests.reliability.harness import LiveNode, by_status, drop, job_counts, wait_until
from tests.reliability.inputs import Inputs
from tests.reliability.verify import exactly_once, sha256

pytestmark = pytest.mark.reliability

CINE = "color3d_jpeg_baseline.dcm"
N_IMAGES = 40
GRACE_S = 60.0  # appliance.service.Node.stop's timeout, what `fame-node run` gives its jobs


def _cine() -> Path | None:
    return next((p for p in ultrasound_sample_files() if p.name == CINE), None)


@pytest.mark.timeout(900)
def test_sigterm_while_busy(tmp_path: Path) -> None:
    cine = _cine()
    if cine is None:
        pytest.skip(f"pydicom-data's {CINE} is not installed (pip install '.[demo]')")
    started = datetime.now(UTC)
    load0 = list(os.getloadavg())
    inputs = Inputs.create(tmp_path / "staging")
    staged = [inputs.make(i) for i in range(N_IMAGES)]
    cine_copy = inputs.staging / "cine.dcm"
    shutil.copyfile(cine, cine_copy)
    expected = {p.name: sha256(p) for p in [cine_copy, *staged]}
    node = LiveNode(tmp_path / "node")
    try:
        node.start()
        drop(cine_copy, node.inbox)

        def cine_running() -> bool:
            return any(
                Path(str(j["path"])).name == "cine.dcm" and j["status"] == "running"
                for j in node.jobs()
            )

        wait_until(cine_running, 120, "the cine's job running", 0.02)
        for p in staged:
            drop(p, node.inbox)
        wait_until(lambda: job_counts(node.db).get("queued", 0) >= 5, 60, "a backlog", 0.02)
        at_signal = node.jobs()
        in_hand = {int(str(j["id"])): j for j in at_signal if j["status"] == "running"}
        code, stop_s = node.terminate(timeout=GRACE_S + 60)
        at_exit = {int(str(j["id"])): j for j in node.jobs()}
        restart_ready_s = node.start()
        t_restart = time.monotonic() - restart_ready_s
        wait_until(
            lambda: job_counts(node.db).get("done", 0) >= len(expected), 600, "all done", 0.1
        )
        after_restart_s = time.monotonic() - t_restart
        code2, _ = node.terminate()
    finally:
        node.ensure_stopped()
    assert code == 0 and code2 == 0, node.tail()
    counts = exactly_once(node.root, node.db, node.jobs(), expected)

    fate = {}
    for job_id, before in in_hand.items():
        after = at_exit[job_id]
        if after["status"] == "done":
            fate[job_id] = "finished within the grace"
        elif after["status"] == "queued" and int(str(after["attempts"])) < int(
            str(before["attempts"])
        ):
            fate[job_id] = "back in the queue, not counted as an attempt"
        else:
            fate[job_id] = f"{after['status']} (attempts {after['attempts']})"
    assert in_hand, "no job was in hand at SIGTERM: the test proves nothing"
    assert stop_s <= GRACE_S + 15, f"shutdown took {stop_s:.1f} s (grace {GRACE_S:.0f} s)"
    assert all(not f.startswith(("running", "failed")) for f in fate.values()), fate
    figures = {
        "_loadavg_at_start": load0,
        "inputs": f"the 120-frame cine {CINE} + {N_IMAGES} of {inputs.source}",
        "workers": 2,
        "grace_s": GRACE_S,
        "at_signal": by_status(at_signal),
        "in_hand": [
            {
                "what": "cine" if Path(str(j["path"])).name == "cine.dcm" else "image",
                "fate": fate[i],
            }
            for i, j in in_hand.items()
        ],
        "at_exit": by_status(list(at_exit.values())),
        "exit_code": code,
        "shutdown_s": rounded(stop_s, 2),
        "restart_ready_s": rounded(restart_ready_s, 2),
        "restart_to_all_done_s": rounded(after_restart_s, 1),
        "check": counts,
    }
    write_figures(
        out_dir(tmp_path / "figures"),
        "sigterm",
        command=".venv/bin/pytest -m reliability tests/reliability/test_sigterm.py",
        figures=figures,
        started=started,
    )


# A job that outlasts the grace: a JPEG of LONG_SCANS progressive scans, which the node is
# told to accept (processing.max_jpeg_scans) and to give all the time it needs. Each scan is
# a full pass over 2000 x 2000 pixels: 4000 took 17 s to decode here, so 40000 hold a worker
# well past the 60 s grace even on a quiet machine.
LONG_SCANS = 40_000


def _alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.append(pid)
    return out


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_sigterm_with_a_job_past_the_grace(tmp_path: Path) -> None:
    started = datetime.now(UTC)
    load0 = list(os.getloadavg())
    inputs = Inputs.create(tmp_path / "staging")
    staged = [inputs.make(i) for i in range(5)]
    long_job = inputs.staging / "long.jpg"
    long_job.write_bytes(jpeg_scan_bomb(2000, LONG_SCANS))
    expected = {p.name: sha256(p) for p in [long_job, *staged]}
    node = LiveNode(
        tmp_path / "node",
        FAME_NODE_PROCESSING__WORKERS="1",
        FAME_NODE_PROCESSING__MAX_JPEG_SCANS=str(LONG_SCANS + 100),
        FAME_NODE_PROCESSING__DECODE_TIMEOUT_S="3600",
        FAME_NODE_PROCESSING__JOB_TIMEOUT_S="3600",
    )
    try:
        node.start()
        drop(long_job, node.inbox)

        def long_running() -> bool:
            return any(
                Path(str(j["path"])).name == "long.jpg" and j["status"] == "running"
                for j in node.jobs()
            )

        wait_until(long_running, 120, "the long job running", 0.05)
        for p in staged:
            drop(p, node.inbox)
        wait_until(lambda: job_counts(node.db).get("queued", 0) >= 5, 60, "a backlog", 0.05)
        time.sleep(2.0)  # the decoder well into the scans
        before = {int(str(j["id"])): j for j in node.jobs()}
        tree = descendants(node.pid)
        code, stop_s = node.terminate(timeout=GRACE_S + 60)
        t_exit = time.monotonic()
        while _alive(tree) and time.monotonic() - t_exit < 10:
            time.sleep(0.1)
        left = _alive(tree)
        at_exit = {int(str(j["id"])): j for j in node.jobs()}
        restart_ready_s = node.start()
        t_restart = time.monotonic() - restart_ready_s
        wait_until(
            lambda: job_counts(node.db).get("done", 0) >= len(expected), 1800, "all done", 0.2
        )
        after_restart_s = time.monotonic() - t_restart
        still_left = _alive(left)  # the first node's processes, once the restart is done
        code2, _ = node.terminate()
    finally:
        node.ensure_stopped()
    assert code == 0 and code2 == 0, node.tail()
    long_id = next(i for i, j in before.items() if Path(str(j["path"])).name == "long.jpg")
    assert before[long_id]["status"] == "running"
    after = at_exit[long_id]
    assert after["status"] == "queued", f"the job past the grace is {after['status']} at exit"
    assert int(str(after["attempts"])) < int(str(before[long_id]["attempts"])), (
        "the requeued job's attempt was counted against the file"
    )
    assert GRACE_S - 1 <= stop_s <= GRACE_S + 15, f"shutdown took {stop_s:.1f} s"
    counts = exactly_once(node.root, node.db, node.jobs(), expected)
    final = {int(str(j["id"])): j for j in node.jobs()}
    figures = {
        "_loadavg_at_start": load0,
        "inputs": f"a {LONG_SCANS}-scan progressive JPEG (2000 x 2000) + 5 of {inputs.source}",
        "workers": 1,
        "grace_s": GRACE_S,
        "at_signal": by_status(list(before.values())),
        "at_exit": by_status(list(at_exit.values())),
        "long_job_at_exit": f"{after['status']}, attempts {after['attempts']}",
        "long_job_final": f"{final[long_id]['status']}, attempts {final[long_id]['attempts']}",
        "exit_code": code,
        "shutdown_s": rounded(stop_s, 2),
        "processes_left_after_exit": len(left),
        "processes_left_when_restart_done": len(still_left),
        "restart_ready_s": rounded(restart_ready_s, 2),
        "restart_to_all_done_s": rounded(after_restart_s, 1),
        "check": counts,
    }
    write_figures(
        out_dir(tmp_path / "figures"),
        "sigterm_past_grace",
        command=".venv/bin/pytest -m 'reliability and slow' tests/reliability/test_sigterm.py",
        figures=figures,
        started=started,
    )
    # The node kills its decoders before it leaves (and a child leaves by itself once its
    # node is gone): none decodes on, unbounded, beside the restarted node's own.
    assert not left, (
        f"{len(left)} decoding process(es) of the stopped node alive 10 s after it exited"
        f" ({len(still_left)} still when the restart had done every file)"
    )
