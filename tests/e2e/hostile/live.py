"""Driving the live node for the hostile-corpus test: drop the corpus into the inbox,
replace a queued file, write one slowly, wait for the answers, stop the node, and read
back what it did (jobs, results, result.json files, log, quarantine).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from tests.e2e.hostile import checks
from tests.e2e.hostile.corpus import Corpus, Entry
from tests.e2e.hostile.invariants import sha256_file
from tests.e2e.hostile.memwatch import MemWatch
from tests.e2e.nodeutil import jobs, results

TERMINAL = {"done", "rejected", "duplicate", "failed"}


def drop_plan(corpus: Corpus) -> tuple[list[Entry], list[Entry], list[Entry]]:
    """(mixed, burst, identity): top-level entries in three waves.

    mixed: good and hostile alternating. burst: the pydicom-data samples (the 120-frame
    cine among them), dropped at once so that the workers have a backlog when the file to
    be replaced arrives right after. identity: re-sends and the UID conflict, after their
    originals.
    """
    top = [e for e in corpus.entries if b"/" not in e.rel]
    identity = [e for e in top if e.original is not None]
    burst = [e for e in top if e.kind == "good_sample"]
    rest = [e for e in top if e not in identity and e not in burst]
    good = [e for e in rest if e.good]
    bad = [e for e in rest if not e.good]
    mixed: list[Entry] = []
    for i in range(max(len(good), len(bad))):
        mixed += good[i : i + 1] + bad[i : i + 1]
    return mixed, burst, identity


def drop(
    corpus: Corpus, inbox: Path, entries: list[Entry], pause_s: float
) -> dict[bytes, datetime]:
    """Move `entries` from staging into the inbox (a folder with what it holds); returns
    when each was dropped."""
    dropped = {}
    for e in entries:
        os.rename(os.fsencode(corpus.staging) + b"/" + e.rel, os.fsencode(inbox) + b"/" + e.rel)
        now = datetime.now(UTC)
        dropped.update({x.rel: now for x in corpus.entries if x.rel.split(b"/")[0] == e.rel})
        time.sleep(pause_s)
    return dropped


def job_status(db: Path, inbox: Path, rel: bytes) -> str | None:
    found = [j for j in jobs(db) if checks.rel_of(j, inbox) == rel]
    return str(found[0]["status"]) if found else None


def replace_while_queued(corpus: Corpus, inbox: Path, scratch: Path, db: Path) -> str:
    """Put the first content in, wait for its job, rename the second over it; returns the
    first job's status at the moment of the swap."""
    rel, first, second = corpus.replaced
    scratch.mkdir(exist_ok=True)
    (scratch / "first").write_bytes(first)
    (scratch / "second").write_bytes(second)
    target = os.fsencode(inbox) + b"/" + rel
    os.rename(scratch / "first", target)
    deadline = time.monotonic() + 30
    while (status := job_status(db, inbox, rel)) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.rename(scratch / "second", target)
    return status or "no job within 30 s"


def write_slowly(path: bytes, content: bytes, pause_s: float = 1.5) -> None:
    """Append `content` in pieces, closing the file after each and pausing `pause_s` (longer
    than the node's close settle time). One piece ends just before the PNG's 12-byte IEND
    chunk: all the pixels are there, only the end marker is missing."""
    cuts = [len(content) * 3 // 10, len(content) * 6 // 10, len(content) - 12, len(content)]
    start = 0
    for end in cuts:
        with open(path, "ab") as fh:  # open, write a piece, close: a close event each time
            fh.write(content[start:end])
        start = end
        if end < len(content):
            time.sleep(pause_s)


def all_answered(corpus: Corpus, inbox: Path, db: Path, sha: dict[bytes, str]) -> bool:
    now = jobs(db)
    matched = checks.match_jobs(corpus, inbox, now, sha)
    for e in corpus.entries:
        if "absent" in e.expect:
            continue
        if not matched[e.rel] or matched[e.rel][-1]["status"] not in TERMINAL:
            return False
    for rel, content in ((corpus.replaced[0], corpus.replaced[2]), corpus.slow):
        digest = hashlib.sha256(content).hexdigest()
        mine = [j for j in now if checks.rel_of(j, inbox) == rel]
        if not any(j["sha256"] == digest and j["status"] in TERMINAL for j in mine):
            return False
        if any(j["status"] not in TERMINAL for j in mine):
            return False
    return True


def stop(proc: subprocess.Popen[bytes], inbox: Path) -> tuple[int | None, float]:
    """SIGTERM; after 60 s unblock any reader stuck on the FIFO, then SIGKILL."""
    t0 = time.monotonic()
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(60), time.monotonic() - t0
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):  # a worker blocked opening the FIFO gets EOF
            os.close(os.open(inbox / "h_fifo.dcm", os.O_WRONLY | os.O_NONBLOCK))
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        return None, time.monotonic() - t0


def collect_results(root: Path) -> tuple[dict[int, str], dict[int, Path]]:
    texts, dirs = {}, {}
    for d in sorted((root / "results").glob("job-*")):
        job_id = int(d.name.split("-")[1])
        dirs[job_id] = d
        if (d / "result.json").is_file():
            texts[job_id] = (d / "result.json").read_text(encoding="utf-8", errors="replace")
    return texts, dirs


def read_log(root: Path) -> bytes:
    parts = [(root / "node.log").read_bytes()]
    parts += [p.read_bytes() for p in sorted((root / "work" / "logs").glob("fame-node.log*"))]
    return b"\n".join(parts)


def heaviest_jobs(
    mem: MemWatch, final: list[dict[str, object]], kind_of_job: dict[int, str]
) -> list[tuple[float, str, int]]:
    """(peak MiB PSS of the node while the job ran, kind, job id), heaviest first."""
    out = []
    for j in final:
        start, end = j.get("started_at"), j.get("finished_at")
        if not (start and end):
            continue
        sample = mem.peak_between(
            datetime.fromisoformat(str(start)), datetime.fromisoformat(str(end))
        )
        if sample is not None:
            job_id = int(str(j["id"]))
            out.append((sample.pss_bytes / 2**20, kind_of_job.get(job_id, "?"), job_id))
    return sorted(out, reverse=True)


def quarantine_listing(root: Path) -> dict[str, tuple[int, str]]:
    """quarantine/ file name -> (size, sha256)."""
    return {
        p.name: (p.stat().st_size, sha256_file(p))
        for p in sorted((root / "quarantine").glob("*"))
        if p.is_file()
    }


def results_or_empty(db: Path) -> list[dict[str, object]]:
    try:
        return results(db)
    except sqlite3.OperationalError:
        return []
