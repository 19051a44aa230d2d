"""1000 files in one burst into a live node: time, images/s, peak memory, queue depth.

The files (distinct images, staged first on the same file system) are renamed into the
inbox of a running, ready node as fast as the loop goes, the way a PACS flushes a backlog
after an outage. The process tree is sampled every 0.25 s: the service's own RSS, the
largest decoding child, the tree's RSS and PSS, and the queue (jobs queued + running, and
files dropped but not yet taken in). At the end every file is checked done exactly once.
FAME_RELIABILITY_BURST_FILES changes the count (1000).
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.reliability.figures import out_dir, rounded, write_figures
from tests.reliability.harness import LiveNode, Sampler, drop, job_counts, mib, wait_until
from tests.reliability.inputs import Inputs
from tests.reliability.verify import exactly_once, sha256

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

N_FILES = int(os.environ.get("FAME_RELIABILITY_BURST_FILES", "1000"))
# 2 GiB for the whole tree: the hostile corpus's bound is 1 GiB for 100 files; a backlog
# must not cost memory in proportion to its length (measured: about 0.4 GiB).
TREE_PSS_BOUND = 2 << 30


@pytest.mark.timeout(3600)
def test_a_burst_of_files(tmp_path: Path) -> None:
    started = datetime.now(UTC)
    load0 = list(os.getloadavg())
    inputs = Inputs.create(tmp_path / "staging")
    t_stage = time.monotonic()
    staged = [inputs.make(i) for i in range(N_FILES)]
    stage_s = time.monotonic() - t_stage
    expected = {p.name: sha256(p) for p in staged}
    node = LiveNode(tmp_path / "node")
    try:
        ready_s = node.start()
        with Sampler(node.pid, node.db, interval_s=0.25) as sampler:
            time.sleep(1.0)  # a few samples of the node at rest
            t0 = time.monotonic()
            for p in staged:
                drop(p, node.inbox)
            dropped_s = time.monotonic() - t0
            queued_s = wait_until(
                lambda: sum(job_counts(node.db).values()) >= N_FILES, 1800, "every file taken", 0.2
            )
            wait_until(lambda: job_counts(node.db).get("done", 0) >= N_FILES, 3000, "all done", 0.2)
            total_s = time.monotonic() - t0
        code, stop_s = node.terminate()
    finally:
        node.ensure_stopped()
    assert code == 0, node.tail()
    counts = exactly_once(node.root, node.db, node.jobs(), expected)

    rest = [s for s in sampler.samples if s.at < t0]
    busy = [s for s in sampler.samples if s.at >= t0]
    with_queue = [s for s in busy if s.counts is not None]
    depth = [
        (s.counts or {}).get("queued", 0) + (s.counts or {}).get("running", 0) for s in with_queue
    ]
    untaken = [N_FILES - sum((s.counts or {}).values()) for s in with_queue]
    peak_pss = max(s.tree_pss for s in busy)
    figures = {
        "_loadavg_at_start": load0,
        "inputs": inputs.source,
        "files": N_FILES,
        "workers": 2,
        "staging_s": rounded(stage_s, 1),
        "ready_s": rounded(ready_s, 2),
        "drop_s": rounded(dropped_s, 2),
        "all_taken_s": rounded(queued_s + dropped_s, 1),
        "total_s": rounded(total_s, 1),
        "images_per_s": rounded(N_FILES / total_s, 2),
        "stop_s": rounded(stop_s, 2),
        "memory_mib": {
            "tree_pss_at_rest": mib(max(s.tree_pss for s in rest)) if rest else None,
            "tree_pss_peak": mib(peak_pss),
            "tree_rss_peak": mib(max(s.tree_rss for s in busy)),
            "service_rss_peak": mib(max(s.main_rss for s in busy)),
            "decoder_child_rss_peak": mib(max(s.child_rss for s in busy)),
            "decoder_child_hwm": mib(max(s.child_hwm for s in busy)),
        },
        "queue_depth_peak": max(depth, default=0),
        "untaken_peak": max(untaken, default=0),
        "check": counts,
    }
    write_figures(
        out_dir(tmp_path / "figures"),
        "burst",
        command=".venv/bin/pytest -m 'reliability and slow' tests/reliability/test_burst.py",
        figures=figures,
        started=started,
    )
    assert peak_pss < TREE_PSS_BOUND, f"tree PSS peaked at {mib(peak_pss)} MiB during the burst"
