"""Issue 8, "done means": the hostile corpus (`corpus`, 50+ kinds) against a live node.

A real `fame-node run` on a fresh root; the corpus and good files are moved into its inbox
interleaved, a file is replaced while its job is queued and another is written slowly.
The run must show: every file answered (``failed`` never), within a bound, the node alive;
every good file done within a bound and no job holding a worker longer than the decode
timeout plus a margin; the node's memory (PSS of the whole process tree, sampled every
100 ms) below a bound; the inbox unchanged; no reason, log line or quarantine copy that
leaks a file's content, a link target, a patient identifier or a raw file name; every
result.json strict JSON. A failure prints one table of what went wrong, per kind.

Bounds, for a 2-core CI machine. Memory: 1 GiB of PSS for the node and its children.
Measured here: 147 MiB at rest (Python, ONNX Runtime, the model, two workers) and a
294 MiB peak over every good file, the 120-frame cine included; a node that inflates the
1 GiB deflate bomb in memory even once peaks at 1.39 GiB (the issue measured 3.3 GB). So
the bound leaves 3.5x the legitimate peak and still catches one inflated bomb. Time:
decoding is given 5 s per input; a job may hold a worker 15 s (5 s plus 10 s for
inference and writing on a slow, shared CPU); every file must be answered within 90 s of
the last drop and every good file done within 60 s of its own (the whole run takes ~10 s
here, on 2 shared cores).
"""

from __future__ import annotations

import csv
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.io.sample_data import pydicom_data_files, ultrasound_sample_files
from tests.e2e.hostile import checks, invariants, live
from tests.e2e.hostile.checks import Problem
from tests.e2e.hostile.corpus import Corpus, Sources, build_corpus
from tests.e2e.hostile.memwatch import MemWatch
from tests.e2e.nodeutil import REPO_ROOT, jobs, node_env, start_node

pytestmark = [
    pytest.mark.skipif(
        not ultrasound_sample_files(),
        reason="pydicom-data is not installed (pip install '.[demo]')",
    ),
    pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux /proc"),
]

DECODE_TIMEOUT_S = 5.0
BOUNDS = {
    "answer_s": 90.0,  # every file answered this long after the last drop
    "good_done_s": 60.0,  # each good file done this long after it was dropped
    "job_hold_s": DECODE_TIMEOUT_S + 10.0,
    "memory_bytes": float(1 << 30),
    "quarantine_max_bytes": float(8 << 20),
    "quarantine_max_file_bytes": float(2 << 20),
}
BUSI = REPO_ROOT.parent / "shared" / "data" / "busi"


def _busi_test_images(per_class: int = 3) -> list[Path]:
    """A few benign and malignant images of the BUSI test split, where the data set is here."""
    manifest = BUSI / "manifest.csv"
    if not manifest.is_file():
        return []
    with manifest.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("split") == "test"]
    chosen = []
    for label in ("benign", "malignant"):
        chosen += [BUSI / r["image"] for r in rows if r["label"] == label][:per_class]
    return [p for p in chosen if p.is_file()]


def _sources(key_file: Path) -> Sources:
    samples = {p.name: p for p in pydicom_data_files()}
    return Sources(samples, samples["MR2_UNCR.dcm"], _busi_test_images(), key_file)


def _env(root: Path) -> dict[str, str]:
    return node_env(
        root,
        FAME_NODE_PROCESSING__DECODE_TIMEOUT_S=str(DECODE_TIMEOUT_S),
        FAME_NODE_PROCESSING__DECODE_MEMORY_MB="512",
        FAME_NODE_PROCESSING__JOB_TIMEOUT_S="30",
        FAME_NODE_PROCESSING__QUARANTINE_MAX_BYTES=str(int(BOUNDS["quarantine_max_bytes"])),
        FAME_NODE_PROCESSING__QUARANTINE_MAX_FILE_BYTES=str(
            int(BOUNDS["quarantine_max_file_bytes"])
        ),
        FAME_NODE_RUNTIME__INTRA_OP_SPINNING="false",  # 2 cores: leave them to the workers
    )


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    node = tmp_path / "node"
    (node / "inbox").mkdir(parents=True)
    (node / "work").mkdir()
    # The node's own secret, made here so the test knows what must never leak.
    key = node / "work" / "pseudonym.key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(os.urandom(32))
    yield node


def _dynamic_kinds(corpus: Corpus, final: list[dict[str, object]], inbox: Path) -> dict[int, str]:
    names = {corpus.replaced[0]: "replaced_while_queued", corpus.slow[0]: "slow_writer"}
    found = {int(str(j["id"])): names.get(checks.rel_of(j, inbox)) for j in final}
    return {i: k for i, k in found.items() if k}


def test_hostile_corpus_against_a_live_node(root: Path, tmp_path: Path) -> None:
    inbox, db = root / "inbox", root / "fame-node.sqlite3"
    t_build = time.monotonic()
    corpus = build_corpus(tmp_path / "staging", _sources(root / "work" / "pseudonym.key"))
    before = invariants.snapshot(corpus.staging)
    sha = {rel: v.split()[-1] for rel, v in before.items() if v.startswith("file ")}
    built_s = time.monotonic() - t_build
    key_before = invariants.sha256_file(root / "work" / "pseudonym.key")

    proc = start_node(_env(root), root / "node.log")
    died_at: float | None = None
    try:
        with MemWatch(proc.pid) as mem:
            ready = root / "work" / "service-status.json"
            deadline = time.monotonic() + 120
            while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if not ready.exists():
                log = live.read_log(root)[-3000:].decode(errors="replace")
                pytest.fail(f"the node did not start:\n{log}")
            at_rest = mem.sample()
            t_drop = time.monotonic()
            mixed, burst, identity = live.drop_plan(corpus)
            dropped = live.drop(corpus, inbox, mixed, pause_s=0.02)
            slow_path = os.fsencode(inbox) + b"/" + corpus.slow[0]
            slow = threading.Thread(target=live.write_slowly, args=(slow_path, corpus.slow[1]))
            slow.start()
            dropped |= live.drop(corpus, inbox, burst, pause_s=0.0)
            queued_when_replaced = live.replace_while_queued(corpus, inbox, tmp_path / "swap", db)
            dropped |= live.drop(corpus, inbox, identity, pause_s=0.02)
            slow.join()
            last_drop = time.monotonic()
            while time.monotonic() - last_drop < BOUNDS["answer_s"]:
                if proc.poll() is not None:
                    died_at = time.monotonic() - t_drop
                    break
                if live.all_answered(corpus, inbox, db, sha):
                    break
                time.sleep(0.5)
            answered_s = time.monotonic() - t_drop
    finally:
        code, stop_s = live.stop(proc, inbox)

    for rel, content in ((corpus.replaced[0], corpus.replaced[2]), corpus.slow):
        before[rel] = f"file {len(content)} {hashlib.sha256(content).hexdigest()}"
    final = jobs(db)
    texts, dirs = live.collect_results(root)
    obs = checks.Observed(
        corpus=corpus,
        inbox=inbox,
        jobs=final,
        results=live.results_or_empty(db),
        result_json=texts,
        result_dirs=dirs,
        dropped_at=dropped,
        sha=sha,
        log=live.read_log(root),
        quarantine=live.quarantine_listing(root),
        bounds=BOUNDS,
    )
    matched = checks.match_jobs(corpus, inbox, final, sha)
    kind_of_job = {j["id"]: e.kind for e in corpus.entries for j in matched[e.rel]}
    kind_of_job.update(_dynamic_kinds(corpus, final, inbox))
    heaviest = live.heaviest_jobs(mem, final, kind_of_job)
    peak = mem.peak()

    problems: list[Problem] = []
    if died_at is not None:
        problems.append(
            Problem(
                "node",
                "fame-node run",
                "alive",
                f"exit {proc.returncode}",
                f"died {died_at:.0f} s after the first drop",
            )
        )
    if code != 0:
        problems.append(
            Problem(
                "node", "fame-node run", "exit 0 on SIGTERM", f"{code}", f"stop took {stop_s:.0f} s"
            )
        )
    if peak.pss_bytes > BOUNDS["memory_bytes"]:
        running = [f"{k} (job {i})" for mib, k, i in heaviest if mib >= peak.pss_bytes / 2**20]
        problems.append(
            Problem(
                "memory",
                f"{peak.n_processes} processes",
                f"PSS <= {BOUNDS['memory_bytes'] / 2**30:.2f} GiB",
                f"{peak.pss_bytes / 2**30:.2f} GiB",
                f"at {peak.at:.0f} s, while {', '.join(running) or '?'} ran",
            )
        )
    problems += checks.check_entries(obs, matched)
    problems += checks.check_job_times(obs, kind_of_job)
    problems += checks.check_result_json(obs, kind_of_job)
    problems += invariants.check_conflict(obs, matched)
    problems += invariants.check_replaced(obs, queued_when_replaced)
    problems += invariants.check_slow(obs)
    problems += invariants.check_privacy(obs)
    problems += invariants.check_unexplained(obs, matched)
    kind_of_rel = {e.rel: e.kind for e in corpus.entries}
    kind_of_rel.update({corpus.replaced[0]: "replaced_while_queued", corpus.slow[0]: "slow_writer"})
    problems += invariants.check_inputs(before, invariants.snapshot(inbox), kind_of_rel)
    if invariants.sha256_file(root / "work" / "pseudonym.key") != key_before:
        problems.append(Problem("symlink_key", "work/pseudonym.key", "unchanged", "changed", ""))

    summary = (
        f"{len(corpus.kinds())} kinds, {len(corpus.entries) + 2} inbox entries, built in "
        f"{built_s:.1f} s; {len(final)} jobs; answered in {answered_s:.0f} s; stopped in "
        f"{stop_s:.1f} s; node memory at rest {at_rest.pss_bytes / 2**20:.0f} MiB PSS, peak "
        f"{peak.pss_bytes / 2**20:.0f} MiB PSS ({peak.n_processes} process(es), at "
        f"{peak.at:.0f} s), peak RSS sum {mem.peak_rss().rss_bytes / 2**20:.0f} MiB; heaviest "
        "jobs (MiB PSS while running): " + ", ".join(f"{k} {m:.0f}" for m, k, _ in heaviest[:4])
    )
    print(summary)
    if problems:
        kinds = ", ".join(sorted({p.kind for p in problems}))
        pytest.fail(
            f"{summary}\n{len(problems)} problems in: {kinds}\n{checks.table(problems)}",
            pytrace=False,
        )
