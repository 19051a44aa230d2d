"""What the hostile-corpus run must show, judged per kind from what was observed.

Pure over an `Observed` record (jobs as read from the database, the log bytes, the inbox
snapshots, the quarantine listing, result.json texts): every check returns `Problem`
rows, one per kind and file that went wrong, so the failure message is a table the
engineers fixing the node can read top to bottom.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tests.e2e.hostile.corpus import Corpus, Entry

Job = dict[str, Any]

# sha256 of 2 GiB of zero bytes, the sparse file's content: a node that records it read it all.
ZEROS_2GIB_SHA256 = "a7c744c13cc101ed66c29f672f92455547889cc586ce6d44fe76ae824958ea51"
# Kinds whose content is free text or opaque bytes: no reason may quote any of it.
FREE_TEXT_KINDS = frozenset({"one_byte", "random_dcm", "text_png", "html", "zip", "pdf", "elf"})


@dataclass(frozen=True)
class Problem:
    kind: str
    file: str
    expected: str
    got: str
    problem: str


@dataclass
class Observed:
    corpus: Corpus
    inbox: Path
    jobs: list[Job]
    results: list[Job]  # rows of the results table
    result_json: dict[int, str]  # job id -> text of its result.json
    result_dirs: dict[int, Path]
    dropped_at: dict[bytes, datetime]  # entry rel -> when it was put into the inbox
    sha: dict[bytes, str]  # regular file entry rel -> sha256 before the run
    log: bytes
    quarantine: dict[str, tuple[int, str]]  # name -> (size, sha256)
    bounds: dict[str, float]
    extra_jobs_ok: set[int] = field(default_factory=set)  # jobs judged by dynamic checks


def rel_of(job: Job, inbox: Path) -> bytes:
    path = str(job["path"])
    root = str(inbox.resolve())
    rel = os.path.relpath(path, root) if path.startswith(root + os.sep) else os.path.basename(path)
    return os.fsencode(rel)


def match_jobs(
    corpus: Corpus, inbox: Path, jobs: list[Job], sha: dict[bytes, str]
) -> dict[bytes, list[Job]]:
    """Entry rel -> its jobs: by path, else (names a store may not keep verbatim, as a
    non-UTF-8 one) by the sha256 of the entry's unique content."""
    by_rel: dict[bytes, list[Job]] = {}
    for job in jobs:
        by_rel.setdefault(rel_of(job, inbox), []).append(job)
    out: dict[bytes, list[Job]] = {}
    claimed: set[int] = set()
    for e in corpus.entries:
        found = by_rel.get(e.rel, [])
        out[e.rel] = found
        claimed.update(j["id"] for j in found)
    for e in corpus.entries:
        if not out[e.rel] and e.rel in sha:
            out[e.rel] = [j for j in jobs if j["sha256"] == sha[e.rel] and j["id"] not in claimed]
            claimed.update(j["id"] for j in out[e.rel])
    return out


def _got(job: Job | None) -> str:
    if job is None:
        return "no job"
    text = f"{job['status']}"
    if job.get("error_code"):
        text += f" ({job['error_code']})"
    return text


def _reason(job: Job) -> str:
    return str(job.get("reason") or "")


def _when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def printable_runs(data: bytes, min_len: int = 12) -> list[str]:
    """Runs of printable ASCII of at least `min_len` characters in `data`."""
    return [m.decode() for m in re.findall(rb"[\x20-\x7e]{%d,}" % min_len, data)]


def strict_json(text: str) -> Any:
    """json.loads that refuses NaN / Infinity, as strict parsers (JavaScript, Go) do."""

    def refuse(token: str) -> Any:
        raise ValueError(f"non-standard JSON constant {token}")

    return json.loads(text, parse_constant=refuse)


def check_entries(obs: Observed, matched: dict[bytes, list[Job]]) -> list[Problem]:
    """Each entry's answer against its expected statuses, and what a right answer must hold."""
    problems: list[Problem] = []
    for e in obs.corpus.entries:
        exp = "/".join(sorted(e.expect))
        for got, what in _entry_issues(obs, e, matched):
            problems.append(Problem(e.kind, e.label, exp, got, what))
    return problems


def _entry_issues(
    obs: Observed, e: Entry, matched: dict[bytes, list[Job]]
) -> list[tuple[str, str]]:
    """(got, problem) pairs for one entry; empty when its answer is right."""
    jobs = matched[e.rel]
    if not jobs:
        return [] if "absent" in e.expect else [("no job", "never answered")]
    if e.expect == {"absent"}:
        return [(_got(jobs[0]), f"ignored by design, yet processed ({len(jobs)} job(s))")]
    out = []
    if len(jobs) > 1:
        out.append((", ".join(_got(j) for j in jobs), f"{len(jobs)} jobs for one unchanged file"))
    job = jobs[-1]
    status, got = str(job["status"]), _got(job)
    if status not in e.expect:
        return [*out, (got, _reason(job)[:150] or "wrong answer")]
    if status == "rejected":
        out += [(got, p) for p in _reason_issues(obs, e, job)]
    if status == "duplicate" and e.original is not None:
        orig = matched.get(e.original) or []
        if not orig or job["duplicate_of"] != orig[-1]["id"]:
            want = orig[-1]["id"] if orig else "none"
            out.append((got, f"duplicate_of={job['duplicate_of']}, not job {want}"))
    if e.good and status == "done":
        out += [(got, p) for p in _late(obs, e, job)]
    if e.kind == "sparse_2gib" and job["sha256"] == ZEROS_2GIB_SHA256:
        out.append((got, "the 2 GiB file was read whole (its sha256 is recorded)"))
    return out


def _reason_issues(obs: Observed, e: Entry, job: Job) -> list[str]:
    reason = _reason(job)
    issues = []
    if len(reason) < 30:
        issues.append(f"reason too short to say what/expected/what to do: {reason!r}")
    name = os.fsdecode(e.rel).rsplit("/", 1)[-1]
    if len(name) >= 5 and name in reason:
        issues.append("the reason quotes the file name")
    path = obs.inbox / os.fsdecode(e.rel)  # moved there; unchanged, or check_inputs says
    markers: list[str] = []
    # Free-text content only: a DICOM's own header values (modality, SOP class) may be cited.
    if e.kind in FREE_TEXT_KINDS and path.is_file() and not path.is_symlink():
        with open(path, "rb") as fh:
            markers = printable_runs(fh.read(4096))
    for secret in obs.corpus.secrets.values():
        markers += [*printable_runs(secret[:4096], 8), secret[:8].hex(), repr(secret[:6])[2:-1]]
    quoted = sorted({m[:40] for m in markers if m[:40] in reason}, key=len)
    if quoted:
        issues.append(f"the reason quotes file content: {quoted[-1]!r}")
    return issues


def _late(obs: Observed, e: Entry, job: Job) -> list[str]:
    dropped, finished = obs.dropped_at.get(e.rel), _when(job.get("finished_at"))
    if dropped is None or finished is None:
        return []
    waited = (finished - dropped).total_seconds()
    bound = obs.bounds["good_done_s"]
    return (
        [f"done {waited:.0f} s after it was dropped (bound {bound:.0f} s)"]
        if waited > bound
        else []
    )


def check_job_times(obs: Observed, kind_of: dict[int, str]) -> list[Problem]:
    """No job holds a worker longer than decode_timeout + margin."""
    bound = obs.bounds["job_hold_s"]
    out = []
    for j in obs.jobs:
        start, end = _when(j.get("started_at")), _when(j.get("finished_at"))
        if start and end and (end - start).total_seconds() > bound:
            held = (end - start).total_seconds()
            out.append(
                Problem(
                    kind_of.get(j["id"], "?"),
                    Path(str(j["path"])).name,
                    f"<= {bound:.0f} s per job",
                    f"{held:.0f} s",
                    "held a worker too long",
                )
            )
    return out


def check_result_json(obs: Observed, kind_of: dict[int, str]) -> list[Problem]:
    out = []
    for job_id, text in obs.result_json.items():
        try:
            strict_json(text)
        except ValueError as exc:
            out.append(
                Problem(
                    kind_of.get(job_id, "?"),
                    f"job {job_id}",
                    "strict JSON",
                    "result.json",
                    str(exc)[:120],
                )
            )
    return out


def frame_of(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L"))


def analysed_as(obs: Observed, job: Job, frame: np.ndarray) -> str | None:
    """None when the job's results are of `frame` (the stored image, before any crop): its
    result.json names the job's sha256 and its overlay, the record of the frame analysed,
    shows that frame; else what differs."""
    text = obs.result_json.get(job["id"])
    if text is None:
        return "no result.json"
    summary = json.loads(text)
    if summary.get("source", {}).get("sha256") != job["sha256"]:
        return "result.json names another sha256 than the job"
    crop = summary.get("image", {}).get("crop")
    if crop:
        x0, y0, x1, y1 = crop
        frame = frame[y0:y1, x0:x1]
    overlay_name = (summary.get("frames") or [{}])[0].get("overlay", "frame_000_overlay.png")
    overlay = frame_of((obs.result_dirs[job["id"]] / overlay_name).read_bytes())
    if overlay.shape != frame.shape:
        return f"analysed a {overlay.shape} frame, this content is {frame.shape}"
    same = float(np.mean(np.abs(overlay.astype(int) - frame.astype(int)) <= 1))
    return None if same >= 0.9 else f"the analysed frame matches this content at {same:.0%} only"


def table(problems: Iterable[Problem]) -> str:
    rows = [("kind", "file", "expected", "got", "problem")]
    rows += [(p.kind, p.file, p.expected, p.got, p.problem) for p in problems]
    widths = [min(34, max(len(r[i]) for r in rows)) for i in range(4)]
    lines = []
    for r in rows:
        cells = [r[i][: widths[i]].ljust(widths[i]) for i in range(4)]
        lines.append(" | ".join([*cells, r[4]]))
    lines.insert(1, "-+-".join("-" * w for w in widths) + "-+-" + "-" * 20)
    return "\n".join(lines)
