"""Write docs/RELIABILITY.md from the reliability tests' JSON figures.

    python -m bench.reliability [--figures docs/reliability] [--out docs/RELIABILITY.md]

Every number in the document comes from the files `tests/reliability` wrote (one per run:
`hostile`, `sigkill`, `burst`, `fault_*`, `sigterm`, `soak_short`, `soak_hour`), with the
machine each was measured on and the command that reproduces it; this module only formats
them. A run with no file yet is listed as not measured, with its command.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from bench.common import REPO_ROOT
from bench.reliability_record import Record, _check, load, provenance
from bench.reliability_runs import (
    _generic,
    flatness,
    judged,
    sigterm,
    sigterm_past_grace,
    soak,
)

FIGURES = REPO_ROOT / "docs" / "reliability"
DOC = REPO_ROOT / "docs" / "RELIABILITY.md"


def hostile(r: Record) -> list[str]:
    f = r["figures"]
    rest = f["at_rest_mib"]
    out = [
        f"{f['kinds_measured']} kinds, {f['inputs']} inputs of `tests/e2e/hostile/corpus.py`, "
        "each dropped alone into a live node with one worker (the next only once it was "
        f"answered), decoding bounded to {f['decode_timeout_s']:g} s and "
        f"{f['decode_memory_mb']} MiB. Memory sampled every {f['sample_interval_s']} s; at "
        f"rest the node's tree holds {rest['tree_pss']} MiB PSS (service {rest['service_rss']} "
        f"MiB RSS, decoding child {rest['decoder_rss']} MiB). *Answer*: drop to the job's "
        "final state (intake, the settle time, decoding, inference, writing); *job*: the "
        "worker's time on it; *rise*: the tree's PSS peak in the window over the sample just "
        "before (what this input cost); *decoder*: the sandbox child's RSS peak and its peak "
        "RSS so far (VmHWM; a child killed for a bound is replaced by a fresh one).",
        "",
        "| kind | inputs | outcome | worst answer s | worst job s | tree PSS peak MiB "
        "| rise MiB | decoder RSS / HWM MiB |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind, k in f["kinds"].items():
        job = "–" if k["worst_job_s"] is None else f"{k['worst_job_s']:.3f}"
        out.append(
            f"| {kind} | {k['inputs']} | {', '.join(k['outcome'])} | {k['worst_answer_s']:.2f} "
            f"| {job} | {k['tree_pss_peak_mib']:.0f} | {k.get('tree_pss_rise_mib', 0):.0f} "
            f"| {k['decoder_rss_peak_mib']:.0f} / {k['decoder_hwm_mib']:.0f} |"
        )
    worst = max(f["kinds"].items(), key=lambda kv: kv[1]["worst_answer_s"])
    heavy = max(f["kinds"].items(), key=lambda kv: kv[1]["tree_pss_peak_mib"])
    out += [
        "",
        f"Slowest answer: {worst[0]} ({worst[1]['worst_answer_s']:.2f} s). Heaviest: "
        f"{heavy[0]} ({heavy[1]['tree_pss_peak_mib']:.0f} MiB PSS for the tree). No input "
        f"was answered `failed`; the node stopped in {f['stop_s']:.1f} s.",
        "",
    ]
    return out


def sigkill(r: Record) -> list[str]:
    f = r["figures"]
    out = [
        f"{f['files']} distinct images ({f['inputs']}) renamed into the inbox at once, "
        f"{f['workers']} workers; SIGKILL when 20 %, 45 % and 70 % were done, then "
        "`fame-node run` again. *Ready*: restart to the status file written; *first done*: "
        "restart to its first job finished.",
        "",
        "| kill | jobs at the kill | running (in hand) | ready s | first done s |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for i, k in enumerate(f["kills"], 1):
        states = ", ".join(f"{n} {s}" for s, n in sorted(k["at_kill"].items()))
        untaken = f["files"] - k["taken_into_queue"]
        if untaken:
            states += f"; {untaken} not yet taken in"
        out.append(
            f"| {i} ({k['done_fraction']:.0%} done) | {states} | {k['running_at_kill']} "
            f"| {k['ready_s']:.2f} | {k['first_done_s']:.2f} |"
        )
    out += [
        "",
        f"All {f['files']} done {f['total_s']:.1f} s after the drop, kills and restarts "
        f"included; {f['jobs_interrupted']} jobs were cut off in hand and retried (attempt "
        f"2). Exactly once: {_check(f['check'])}.",
        "",
    ]
    return out


def burst(r: Record) -> list[str]:
    f = r["figures"]
    m = f["memory_mib"]
    return [
        f"{f['files']} distinct images ({f['inputs']}) renamed into the inbox of a ready node "
        f"({f['workers']} workers) in {f['drop_s']:.2f} s.",
        "",
        "| figure | value |",
        "| --- | ---: |",
        f"| all taken into the queue | {f['all_taken_s']:.1f} s |",
        f"| all done | {f['total_s']:.1f} s |",
        f"| throughput | {f['images_per_s']:.2f} images/s |",
        f"| queue depth peak (queued + running) | {f['queue_depth_peak']} |",
        f"| dropped, not yet taken in, peak | {f['untaken_peak']} |",
        f"| tree PSS at rest / peak | {m['tree_pss_at_rest']:.0f} / {m['tree_pss_peak']:.0f} MiB |",
        f"| tree RSS peak (sum over processes) | {m['tree_rss_peak']:.0f} MiB |",
        f"| service RSS peak | {m['service_rss_peak']:.0f} MiB |",
        f"| decoding child RSS peak / VmHWM | {m['decoder_child_rss_peak']:.0f} / "
        f"{m['decoder_child_hwm']:.0f} MiB |",
        "",
        f"Exactly once: {_check(f['check'])}.",
        "",
    ]


FAULTS = (
    ("fault_results_full", "Results folder full"),
    ("fault_store_full", "Store disk full"),
    ("fault_store_locked", "Store locked by another process"),
)


def faults(records: dict[str, Record]) -> list[str]:
    out = [
        "Each against a fresh node with the default backoff (2 s, doubling); "
        "8 files dropped while the fault holds, then it is cleared. *First* / *all*: "
        "clear to the first / last job done; *status clear*: to the status file no longer "
        "naming the wait (rewritten every 5 s). *Tracebacks*: in the node's log, whole run.",
        "",
        "| fault | held s | jobs when cleared | status said it waited for | first s | all s "
        "| status clear s | tracebacks |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, title in FAULTS:
        if name not in records:
            out.append(f"| {title} | not measured | | | | | | |")
            continue
        f = records[name]["figures"]
        jobs = ", ".join(f"{n} {s}" for s, n in sorted(f["at_clear"].items())) or "none yet"
        waited = "; ".join(_generic(w) for w in f["waited_for"]) or "**nothing**"
        clear = f.get("status_clear_after_clear_s")
        out.append(
            f"| {title}: {f['fault']} | {f['hold_s']:g} | {jobs} | {waited} "
            f"| {f['first_done_after_clear_s']:.2f} | {f['all_done_after_clear_s']:.2f} "
            f"| {'–' if clear is None else f'{clear:.1f}'} | {f.get('log_tracebacks', '?')} |"
        )
    checks = [records[n]["figures"]["check"] for n, _ in FAULTS if n in records]
    if checks and all(c == checks[0] for c in checks):
        out += ["", f"After each of the {len(checks)}, exactly once: {_check(checks[0])}."]
    elif checks:
        out += ["", "After each, exactly once: " + "; ".join(_check(c) for c in checks) + "."]
    silent = [t for n, t in FAULTS if n in records and not records[n]["figures"]["waited_for"]]
    noisy = [
        t for n, t in FAULTS if n in records and records[n]["figures"].get("log_tracebacks", 0) > 5
    ]
    if silent or noisy:
        out += [
            "",
            "**Open defects these runs show** (nothing was lost in any of them): "
            + "; ".join(
                [f"{t}: `fame-node status` named no wait" for t in silent]
                + [f"{t}: a traceback in the log for every retry" for t in noisy]
            )
            + ". Filed with the lead (issue 11).",
        ]
    out.append("")
    for name, _ in FAULTS:
        if name in records:
            out += provenance(records[name])
    return out


SECTIONS = (
    ("hostile", "The hostile-input corpus: outcome, time and memory per kind", hostile),
    ("sigkill", "SIGKILL three times during a batch of 200", sigkill),
    ("burst", "1000 files in one burst", burst),
    ("sigterm", "SIGTERM while busy", sigterm),
    ("sigterm_past_grace", "SIGTERM with a job past the grace", sigterm_past_grace),
    ("soak_short", "Soak, short (the CI run)", soak),
    ("soak_hour", "Soak, one hour", soak),
)
COMMANDS = {
    "hostile": ".venv/bin/pytest -m reliability tests/reliability/test_hostile_figures.py",
    "sigkill": ".venv/bin/pytest -m 'reliability and slow' tests/reliability/test_sigkill.py",
    "burst": ".venv/bin/pytest -m 'reliability and slow' tests/reliability/test_burst.py",
    "sigterm": ".venv/bin/pytest -m reliability tests/reliability/test_sigterm.py",
    "sigterm_past_grace": (
        ".venv/bin/pytest -m 'reliability and slow' tests/reliability/test_sigterm.py"
    ),
    "soak_short": ".venv/bin/pytest -m reliability tests/reliability/test_soak.py",
    "soak_hour": ".venv/bin/pytest -m 'reliability and slow' tests/reliability/test_soak.py",
}

HEADER = """# Reliability figures

What the node survives, measured on a live `fame-node run` (a subprocess on a temporary
root, files renamed into its real inbox, real SIGKILL / SIGTERM, real tmpfs mounts, a real
second SQLite connection), by the tests in [`tests/reliability/`](../tests/reliability/).
Each test writes its figures to `docs/reliability/*.json`; `python -m bench.reliability`
writes this file from them. Nothing here is edited by hand.

- `make reliability`: the CI-sized run (`pytest -m reliability`: the hostile corpus, the
  three faults, SIGTERM, a 150 s soak; 5 minutes here, on the shared 2 cores).
- `make reliability-long` (and `make bench`): the long ones (`-m 'reliability and
  slow'`): the 1000-file burst, three SIGKILLs in 200 files, SIGTERM with a job past the
  grace, the hour-long soak.

**The machine is shared.** The reference machine has 2 CPU cores shared with other
engineers' test runs and a model training; the load average next to each figure says how
busy it was (a load of 8 on 2 cores means a process gets about a quarter of a core).
Times and throughput here are therefore upper bounds for a dedicated machine; counts
(exactly once, nothing lost) do not depend on it. For throughput on a quiet machine see
[`PERFORMANCE.md`](PERFORMANCE.md).
"""


def overlaps(records: dict[str, Record]) -> list[str]:
    """Which runs were measured while another of them ran (from their start and end times)."""
    spans = sorted(
        (name, datetime.fromisoformat(r["started_at"]), datetime.fromisoformat(r["finished_at"]))
        for name, r in records.items()
        if r.get("started_at") and r.get("finished_at")
    )
    if not spans:
        return []
    pairs = [
        f"{a} with {b}"
        for i, (a, a0, a1) in enumerate(spans)
        for b, b0, b1 in spans[i + 1 :]
        if a0 < b1 and b0 < a1
    ]
    if not pairs:
        return ["No two of these runs overlapped in time (each ran without the others).", ""]
    return [
        "These runs overlapped in time, so each has the other's load in its figures: "
        + "; ".join(pairs)
        + ".",
        "",
    ]


def summary(records: dict[str, Record]) -> list[str]:
    """One line per run measured: the figure a reader looks for first."""
    out = ["## In short", ""]
    if "hostile" in records:
        k = records["hostile"]["figures"]["kinds"]
        failed = sum("failed" in " ".join(v["outcome"]) for v in k.values())
        worst = max(v["worst_answer_s"] for v in k.values())
        heavy = max(v["tree_pss_peak_mib"] for v in k.values())
        out.append(
            f"- Hostile corpus: {len(k)} kinds, {failed} answered `failed`; slowest answer "
            f"{worst:.1f} s, node tree at most {heavy:.0f} MiB PSS."
        )
    if "sigkill" in records:
        f = records["sigkill"]["figures"]
        ready = max(x["first_done_s"] for x in f["kills"])
        out.append(
            f"- SIGKILL x{len(f['kills'])} in {f['files']} files: each done exactly once; back "
            f"to work within {ready:.1f} s of each restart."
        )
    if "burst" in records:
        f = records["burst"]["figures"]
        out.append(
            f"- Burst of {f['files']}: {f['total_s']:.0f} s, {f['images_per_s']:.2f} images/s, "
            f"tree PSS peak {f['memory_mib']['tree_pss_peak']:.0f} MiB, queue depth peak "
            f"{f['queue_depth_peak']}."
        )
    for name, title in FAULTS:
        if name in records:
            f = records[name]["figures"]
            out.append(
                f"- {title}: nothing lost; every file done {f['all_done_after_clear_s']:.1f} s "
                "after the fault cleared."
            )
    if "sigterm" in records:
        f = records["sigterm"]["figures"]
        out.append(
            f"- SIGTERM while busy: shutdown in {f['shutdown_s']:.1f} s, jobs in hand "
            "finished or requeued, all done after the restart."
        )
    if "sigterm_past_grace" in records:
        f = records["sigterm_past_grace"]["figures"]
        out.append(
            f"- SIGTERM with a job past the {f['grace_s']:g} s grace: shutdown in "
            f"{f['shutdown_s']:.1f} s, the job back in the queue ({f['long_job_at_exit']}), "
            "done after the restart"
            + (
                "; **its decoding child outlived the node** (open defect)."
                if f["processes_left_after_exit"]
                else "."
            )
        )
    for name in ("soak_short", "soak_hour"):
        if name in records:
            f = records[name]["figures"]
            lat = f["latency_s"]
            key, words = judged(f)
            out.append(
                f"- Soak {f['duration_s'] / 60:.0f} min: {words} slope "
                f"{f['slope_mib_per_h'][key]:+.1f} MiB/h "
                f"({flatness(f).split(':')[0]}); p95 latency "
                f"{lat['first_tenth']['p95']:.2f} s first tenth, {lat['last_tenth']['p95']:.2f} s "
                "last tenth."
            )
    return [*out, ""]


def render(records: dict[str, Record]) -> str:
    lines = [HEADER, *overlaps(records), *summary(records)]
    fault_done = False
    for name, title, fn in SECTIONS:
        if name == "sigterm" and not fault_done:
            lines += ["## Disk full and the store locked: resuming by itself", ""]
            lines += faults(records)
            fault_done = True
        lines += [f"## {title}", ""]
        if name in records:
            lines += fn(records[name]) + provenance(records[name])
        else:
            lines += [
                f"Not measured yet: `{COMMANDS[name]}`, then `python -m bench.reliability`.",
                "",
            ]
    return "\n".join(lines).rstrip() + "\n"


def write(folder: Path, out: Path) -> Path:
    text = render(load(folder))
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__)
    p.add_argument("--figures", type=Path, default=FIGURES, help="folder of the JSON figures")
    p.add_argument("--out", type=Path, default=DOC, help="the Markdown file written")
    args = p.parse_args(argv)
    if not args.figures.is_dir():
        p.error(f"--figures {args.figures} is not a folder; run `make reliability` first")
    print(f"written: {write(args.figures, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
