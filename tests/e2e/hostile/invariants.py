"""Checks across the whole run: identity (re-sends, the UID conflict, the replaced and the
slowly written file), privacy (log, reasons, quarantine), inputs unchanged, and jobs the
corpus does not explain. Pure over `Observed`, like `checks`; each returns `Problem` rows.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import numpy as np
import pydicom

from tests.e2e.hostile.checks import Job, Observed, Problem, analysed_as, frame_of, rel_of

LARGE_FILE_BYTES = 256 << 20


def snapshot(folder: Path) -> dict[bytes, str]:
    """Every entry below `folder` (bytes paths: names need not be UTF-8) -> what it is:
    a regular file's sha256, a symlink's target, or its type. Links are not followed."""
    out: dict[bytes, str] = {}
    root = os.fsencode(folder)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = f"symlink -> {os.fsdecode(os.readlink(full))!r}"
            elif stat.S_ISREG(st.st_mode) and st.st_size > LARGE_FILE_BYTES:
                out[rel] = _large_file(full, st)
            elif stat.S_ISREG(st.st_mode):
                out[rel] = f"file {st.st_size} {sha256_file(full)}"
            else:
                out[rel] = f"{stat.filemode(st.st_mode)[0]} (type)"
    return out


def _large_file(path: bytes, st: os.stat_result) -> str:
    """A file too large to hash twice in a quick test (the 2 GiB sparse one): its size,
    allocated blocks, modification time and the sha256 of its first and last MiB."""
    with open(path, "rb") as fh:
        head = hashlib.sha256(fh.read(1 << 20)).hexdigest()[:16]
        fh.seek(max(0, st.st_size - (1 << 20)))
        tail = hashlib.sha256(fh.read()).hexdigest()[:16]
    return f"large {st.st_size} blocks={st.st_blocks} mtime={st.st_mtime_ns} {head} {tail}"


def sha256_file(path: bytes | str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_inputs(
    before: dict[bytes, str], after: dict[bytes, str], kind_of: dict[bytes, str]
) -> list[Problem]:
    out = []
    for rel in sorted(set(before) | set(after)):
        b, a = before.get(rel, "absent"), after.get(rel, "absent")
        if a != b:
            label = ascii(os.fsdecode(rel))[1:-1]
            out.append(Problem(kind_of.get(rel, "?"), label, "unchanged", a[:60], f"was {b[:60]}"))
    return out


def _jobs_for_name(obs: Observed, rel: bytes) -> list[Job]:
    return [j for j in obs.jobs if rel_of(j, obs.inbox) == rel]


def check_replaced(obs: Observed, queued_when_replaced: str) -> list[Problem]:
    """Both contents analysed, each as itself; never one content's findings on the other."""
    rel, first, second = obs.corpus.replaced
    label, kind = os.fsdecode(rel), "replaced_while_queued"
    jobs = _jobs_for_name(obs, rel)
    out = []
    if queued_when_replaced != "queued":
        out.append(
            Problem(
                kind,
                label,
                "first job queued at the swap",
                queued_when_replaced,
                "the test could not replace the file while its job was queued",
            )
        )
    for which, content in (("first", first), ("second", second)):
        sha = hashlib.sha256(content).hexdigest()
        done = [j for j in jobs if j["sha256"] == sha and j["status"] == "done"]
        if len(done) != 1:
            got = ", ".join(f"{j['status']}" for j in jobs if j["sha256"] == sha) or "no job"
            out.append(Problem(kind, label, "1 done job", got, f"the {which} content"))
            continue
        diff = analysed_as(obs, done[0], frame_of(content))
        if diff:
            out.append(Problem(kind, label, "analysed as itself", "done", f"{which}: {diff}"))
    known = {hashlib.sha256(c).hexdigest() for c in (first, second)}
    for j in jobs:
        if j["status"] == "failed" or (j["status"] == "done" and j["sha256"] not in known):
            out.append(Problem(kind, label, "done/rejected", str(j["status"]), "stray job"))
    return out


def check_slow(obs: Observed) -> list[Problem]:
    """Exactly one done job, for the final content; partial states rejected or not taken."""
    rel, content = obs.corpus.slow
    label, kind = os.fsdecode(rel), "slow_writer"
    jobs = _jobs_for_name(obs, rel)
    sha = hashlib.sha256(content).hexdigest()
    done = [j for j in jobs if j["status"] == "done"]
    out = []
    partial_done = [j for j in done if j["sha256"] != sha]
    if partial_done:
        out.append(
            Problem(
                kind,
                label,
                "1 done (final)",
                f"{len(done)} done",
                f"{len(partial_done)} partial state(s) analysed as images",
            )
        )
    final = [j for j in done if j["sha256"] == sha]
    if len(final) != 1:
        out.append(
            Problem(
                kind,
                label,
                "1 done (final)",
                f"{len(final)} done for the final content",
                ", ".join(str(j["status"]) for j in jobs) or "no job",
            )
        )
    elif diff := analysed_as(obs, final[0], frame_of(content)):
        out.append(Problem(kind, label, "analysed as itself", "done", diff))
    bad = [j for j in jobs if j["status"] not in ("done", "rejected", "duplicate")]
    if bad:
        out.append(
            Problem(
                kind, label, "no failed/unfinished", ", ".join(str(j["status"]) for j in bad), ""
            )
        )
    return out


def _dicom_frame(path: Path) -> np.ndarray:
    return np.asarray(pydicom.dcmread(path).pixel_array, np.uint8)


def check_conflict(obs: Observed, matched: dict[bytes, list[Job]]) -> list[Problem]:
    """The same SOP Instance UID, another patient and other pixels: analysed on its own,
    flagged, never carrying the first image's findings."""
    out = []
    for e in obs.corpus.entries:
        if e.kind != "uid_conflict" or e.original is None:
            continue
        jobs, originals = matched[e.rel], matched[e.original]
        if not jobs or not originals or jobs[-1]["status"] != "done":
            continue  # check_entries reports the wrong status
        issues = _conflict_issues(obs, jobs[-1], originals[-1], e.rel, e.original)
        out += [Problem(e.kind, e.label, "own results, flagged", "done", p) for p in issues]
    return out


def _conflict_issues(obs: Observed, job: Job, orig: Job, rel: bytes, orig_rel: bytes) -> list[str]:
    issues = []
    if job["duplicate_of"] is not None:
        issues.append(f"points at job {job['duplicate_of']}")
    mine = [r for r in obs.results if r["job_id"] == job["id"]]
    theirs = [r for r in obs.results if r["job_id"] == orig["id"]]
    if not mine:
        issues.append("no result rows of its own")
    elif theirs and [r["probabilities"] for r in mine] == [r["probabilities"] for r in theirs]:
        issues.append("its findings are identical to the first image's")
    for j, r in ((job, rel), (orig, orig_rel)):
        diff = analysed_as(obs, j, _dicom_frame(obs.inbox / os.fsdecode(r)))
        if diff:
            issues.append(f"job {j['id']}: {diff}")
    text = " ".join(
        [
            str(job.get("reason") or ""),
            str(job.get("error_code") or ""),
            obs.result_json.get(job["id"], ""),
            *(str(r["flags"]) for r in mine),
        ]
    ).lower()
    if "conflict" not in text:
        issues.append("no conflict flag (in its result flags, result.json or job reason)")
    return issues


def check_privacy(obs: Observed) -> list[Problem]:
    """The log holds no raw identifiers or file names; quarantine holds no link target."""
    log, out = obs.log, []
    for needle in (b"DOE^JANE", b"MRN123456"):
        if needle in log:
            out.append(
                Problem(
                    "patient_name",
                    "DOE^JANE_MRN123456.dcm",
                    "not in the log",
                    f"{log.count(needle)} x",
                    f"the log contains {needle.decode()}",
                )
            )
    for kind, needle in (
        ("name_newline", b"new\nline"),
        ("name_ansi", b"\x1b["),
        ("name_non_utf8", b"caf\xe9"),
    ):
        if needle in log:
            out.append(
                Problem(
                    kind,
                    ascii(needle.decode("latin-1")),
                    "never raw in the log",
                    f"{log.count(needle)} x",
                    "written raw into the log",
                )
            )
    named = sorted(
        {
            e.label
            for e in obs.corpus.entries
            if len(os.path.basename(e.rel)) >= 8 and os.path.basename(e.rel) in log
        }
    )
    if named:
        out.append(
            Problem(
                "logs",
                f"{len(named)} files",
                "pseudonyms only",
                "raw names",
                "the log names files in clear, e.g. " + ", ".join(named[:4]),
            )
        )
    for what, secret in obs.corpus.secrets.items():
        first = secret.splitlines()[0][:16] if secret.strip() else secret[:16]
        if len(first) >= 6 and first in log:
            out.append(Problem("symlink", what, "content never logged", "in the log", repr(first)))
    tracebacks = log.count(b"Traceback (most recent call last)")
    if tracebacks:
        out.append(
            Problem(
                "logs",
                "node log",
                "no traceback for input",
                f"{tracebacks} tracebacks",
                "an input made the node log a traceback",
            )
        )
    total = sum(size for size, _ in obs.quarantine.values())
    secret_sha = {hashlib.sha256(s).hexdigest(): w for w, s in obs.corpus.secrets.items()}
    for name, (size, sha) in sorted(obs.quarantine.items()):
        if sha in secret_sha:
            out.append(
                Problem(
                    "symlink",
                    name,
                    "no copy of a link target",
                    "quarantined",
                    f"quarantine holds a copy of {secret_sha[sha]}",
                )
            )
        if size > obs.bounds["quarantine_max_file_bytes"]:
            out.append(
                Problem("quarantine", name, "<= max file size", f"{size} bytes", "too large")
            )
    if total > obs.bounds["quarantine_max_bytes"]:
        out.append(
            Problem(
                "quarantine",
                "quarantine/",
                f"<= {obs.bounds['quarantine_max_bytes']:.0f} B",
                f"{total} bytes",
                "over its size limit",
            )
        )
    return out


def check_unexplained(obs: Observed, matched: dict[bytes, list[Job]]) -> list[Problem]:
    """Jobs no corpus entry accounts for (a path never dropped, a second job for a file)."""
    known = {j["id"] for jobs in matched.values() for j in jobs}
    dynamic = {obs.corpus.replaced[0], obs.corpus.slow[0]}
    return [
        Problem(
            "?",
            ascii(str(j["path"]))[1:-1][-50:],
            "no job",
            str(j["status"]),
            "a job the corpus does not explain",
        )
        for j in obs.jobs
        if j["id"] not in known and rel_of(j, obs.inbox) not in dynamic
    ]
