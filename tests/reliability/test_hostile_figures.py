"""The hostile-input corpus, one input at a time: per kind, its answer and its cost.

The corpus of tests/e2e/hostile (built by its own `build_corpus`, nothing rewritten) goes
into a live node with one worker, one input at a time: each is renamed into the inbox and
the next follows only once it is answered, so what the node spends in that window is that
input's cost. Then the two kinds made while the node runs (a slow writer, a file replaced
while queued). Per kind: the outcome (status and error code), the worst wall time from the
drop to the answer and of the job itself, and the peak memory in that window: the whole
process tree's PSS, the service's RSS, the decoding sandbox child's RSS and peak RSS
(VmHWM). The correctness of every answer is the hostile test's business; here an answer
must only be what the corpus expects (never `failed`), within the decode bound, and no
input may take the tree past 1 GiB.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from appliance.io.sample_data import pydicom_data_files, ultrasound_sample_files
from appliance.store.db import from_db_time
from tests.e2e.hostile import checks, invariants, live
from tests.e2e.hostile.corpus import Corpus, Entry, Sources, build_corpus
from tests.reliability.figures import out_dir, rounded, write_figures
from tests.reliability.harness import TERMINAL, LiveNode, Sample, Sampler, mib
from tests.reliability.inputs import busi_images

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.skipif(
        not ultrasound_sample_files(),
        reason="pydicom-data is not installed (pip install '.[demo]')",
    ),
    pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux /proc"),
]

DECODE_TIMEOUT_S = 5.0
ANSWER_BOUND_S = DECODE_TIMEOUT_S + 25.0  # the decode bound, plus intake and inference
TREE_PSS_BOUND = 1 << 30
ABSENT_WAIT_S = 2.5  # longer than a rescan (1 s) plus the settle time: nothing came


def _node(root: Path) -> LiveNode:
    (root / "work").mkdir(parents=True)
    key = root / "work" / "pseudonym.key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(os.urandom(32))
    return LiveNode(
        root,
        FAME_NODE_PROCESSING__WORKERS="1",
        FAME_NODE_PROCESSING__DECODE_TIMEOUT_S=str(DECODE_TIMEOUT_S),
        FAME_NODE_PROCESSING__DECODE_MEMORY_MB="512",
        FAME_NODE_PROCESSING__JOB_TIMEOUT_S="30",
        FAME_NODE_PROCESSING__QUARANTINE_MAX_BYTES=str(8 << 20),
        FAME_NODE_PROCESSING__QUARANTINE_MAX_FILE_BYTES=str(2 << 20),
    )


def _answered(matched: list[list[dict[str, object]]]) -> bool:
    return all(found and str(found[-1]["status"]) in TERMINAL for found in matched)


class Measure:
    """Per kind: the windows (drop, answer) of its inputs and their jobs."""

    def __init__(self, corpus: Corpus, node: LiveNode, sha: dict[bytes, str]) -> None:
        self.corpus, self.node, self.sha = corpus, node, sha
        self.windows: dict[str, list[tuple[float, float]]] = {}

    def wait(self, kind: str, rels: list[bytes], t_drop: float, absent: bool) -> None:
        deadline = t_drop + ANSWER_BOUND_S + 30
        while time.monotonic() < deadline:
            matched = checks.match_jobs(self.corpus, self.node.inbox, self.node.jobs(), self.sha)
            if _answered([matched[r] for r in rels]):
                break
            time.sleep(0.05)
        if absent:  # an input that gets no job by design: give the node time to show one
            time.sleep(max(0.0, t_drop + ABSENT_WAIT_S - time.monotonic()))
        self.windows.setdefault(kind, []).append((t_drop, time.monotonic()))


def _sub_entries(corpus: Corpus, top: Entry) -> list[Entry]:
    return [e for e in corpus.entries if e.rel.split(b"/")[0] == top.rel]


def _around(sampler: Sampler, start: float, end: float) -> list[Sample]:
    after = [s for s in sampler.samples if s.at > end][:1]
    return sampler.between(start, end) + after


def _before(sampler: Sampler, start: float) -> int:
    earlier = [s for s in sampler.samples if s.at < start]
    return earlier[-1].tree_pss if earlier else 0


def _peak(samples: list[Sample], attr: str) -> int:
    return max((int(getattr(s, attr)) for s in samples), default=0)


@pytest.mark.timeout(1200)
def test_hostile_corpus_per_kind_outcome_time_and_memory(tmp_path: Path) -> None:
    started = datetime.now(UTC)
    load0 = list(os.getloadavg())
    node = _node(tmp_path / "node")
    samples = {p.name: p for p in pydicom_data_files()}
    sources = Sources(
        samples, samples["MR2_UNCR.dcm"], busi_images()[:6], node.root / "work" / "pseudonym.key"
    )
    corpus = build_corpus(tmp_path / "staging", sources)
    before = invariants.snapshot(corpus.staging)
    sha = {rel: v.split()[-1] for rel, v in before.items() if v.startswith("file ")}
    top = [e for e in corpus.entries if b"/" not in e.rel]
    try:
        node.start()
        with Sampler(node.pid, None, interval_s=0.05) as sampler:
            measure = Measure(corpus, node, sha)
            time.sleep(1.0)
            at_rest = sampler.samples[-1]
            for e in top:
                subs = _sub_entries(corpus, e)
                t = time.monotonic()
                live.drop(corpus, node.inbox, [e], pause_s=0.0)
                answered = [s.rel for s in subs if "absent" not in s.expect]
                measure.wait(e.kind, answered, t, absent=len(answered) < len(subs))
            # The kinds made while the node runs, each alone too.
            t = time.monotonic()
            path = os.fsencode(node.inbox) + b"/" + corpus.slow[0]
            writer = threading.Thread(target=live.write_slowly, args=(path, corpus.slow[1]))
            writer.start()
            writer.join()
            _wait_name(node, corpus.slow[0], 1)
            measure.windows["slow_writer"] = [(t, time.monotonic())]
            t = time.monotonic()
            live.replace_while_queued(corpus, node.inbox, tmp_path / "swap", node.db)
            _wait_name(node, corpus.replaced[0], 2)
            measure.windows["replaced_while_queued"] = [(t, time.monotonic())]
        code, stop_s = node.terminate()
    finally:
        node.ensure_stopped()
    assert code == 0, node.tail()

    final = node.jobs()
    matched = checks.match_jobs(corpus, node.inbox, final, sha)
    jobs_of_kind: dict[str, list[dict[str, object]]] = {}
    wrong: list[str] = []
    for e in corpus.entries:
        found = matched[e.rel]
        jobs_of_kind.setdefault(e.kind, []).extend(found)
        got = str(found[-1]["status"]) if found else "absent"
        if got not in e.expect:
            wrong.append(f"{e.kind} {e.label}: {got}, expected {sorted(e.expect)}")
    for rel, kind in (
        (corpus.slow[0], "slow_writer"),
        (corpus.replaced[0], "replaced_while_queued"),
    ):
        jobs_of_kind[kind] = [j for j in final if checks.rel_of(j, node.inbox) == rel]

    kinds: dict[str, dict[str, object]] = {}
    for kind, windows in measure.windows.items():
        found = jobs_of_kind.get(kind, [])
        # Every sample in the window, and the first one after it (a window of a few ms may
        # fall between two samples); the rise is over the last sample before it.
        inside = [s for a, b in windows for s in _around(sampler, a, b)]
        rise = max(
            (_peak(_around(sampler, a, b), "tree_pss") - _before(sampler, a) for a, b in windows),
            default=0,
        )
        run_s = [
            (
                from_db_time(str(j["finished_at"])) - from_db_time(str(j["started_at"]))
            ).total_seconds()
            for j in found
            if j.get("started_at") and j.get("finished_at")
        ]
        outcomes = sorted(
            {
                f"{j['status']}" + (f" ({j['error_code']})" if j.get("error_code") else "")
                for j in found
            }
        )
        kinds[kind] = {
            "inputs": len(windows),
            "outcome": outcomes or ["no job (ignored by design)"],
            "worst_answer_s": rounded(max(b - a for a, b in windows), 2),
            "worst_job_s": rounded(max(run_s), 3) if run_s else None,
            "tree_pss_peak_mib": mib(_peak(inside, "tree_pss")),
            "tree_pss_rise_mib": mib(max(rise, 0)),
            "service_rss_peak_mib": mib(_peak(inside, "main_rss")),
            "decoder_rss_peak_mib": mib(_peak(inside, "child_rss")),
            "decoder_hwm_mib": mib(_peak(inside, "child_hwm")),
            "samples": len(inside),
        }
    figures = {
        "_loadavg_at_start": load0,
        "kinds_measured": len(kinds),
        "inputs": len(corpus.entries) + 2,
        "workers": 1,
        "decode_timeout_s": DECODE_TIMEOUT_S,
        "decode_memory_mb": 512,
        "sample_interval_s": 0.05,
        "at_rest_mib": {
            "tree_pss": mib(at_rest.tree_pss),
            "service_rss": mib(at_rest.main_rss),
            "decoder_rss": mib(at_rest.child_rss),
        },
        "stop_s": rounded(stop_s, 2),
        "kinds": kinds,
    }
    write_figures(
        out_dir(tmp_path / "figures"),
        "hostile",
        command=".venv/bin/pytest -m reliability tests/reliability/test_hostile_figures.py",
        figures=figures,
        started=started,
    )
    assert not wrong, "answers other than the corpus expects:\n" + "\n".join(wrong)
    assert "failed" not in {str(j["status"]) for j in final}
    slow = {
        k: v["worst_answer_s"]
        for k, v in kinds.items()
        if float(str(v["worst_answer_s"])) > ANSWER_BOUND_S
    }
    assert not slow, f"answered later than {ANSWER_BOUND_S} s: {slow}"
    heavy = {
        k: v["tree_pss_peak_mib"]
        for k, v in kinds.items()
        if float(str(v["tree_pss_peak_mib"])) > mib(TREE_PSS_BOUND)
    }
    assert not heavy, f"node tree PSS over 1 GiB while answering: {heavy}"


def _wait_name(node: LiveNode, rel: bytes, n_contents: int, timeout: float = 60) -> None:
    """Wait until the inbox name `rel` has `n_contents` jobs, none unfinished."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mine = [j for j in node.jobs() if checks.rel_of(j, node.inbox) == rel]
        done = {str(j["sha256"]) for j in mine if str(j["status"]) == "done"}
        if len(done) >= n_contents and all(str(j["status"]) in TERMINAL for j in mine):
            return
        time.sleep(0.05)
    raise AssertionError(f"{rel!r}: not {n_contents} content(s) done within {timeout:.0f} s")
