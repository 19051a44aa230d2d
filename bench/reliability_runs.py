"""The SIGTERM and soak sections of docs/RELIABILITY.md (`bench.reliability` renders the rest)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.reliability_record import Record, _check


def _generic(condition: str) -> str:
    """A condition naming a temporary folder, shown without it."""
    if " in /" in condition:
        head, path = condition.split(" in /", 1)
        return f"{head} in …/{Path(path).name}"
    return condition


def sigterm(r: Record) -> list[str]:
    f = r["figures"]
    in_hand = "; ".join(f"{j['what']}: {j['fate']}" for j in f["in_hand"])
    at_signal = ", ".join(f"{n} {s}" for s, n in sorted(f["at_signal"].items()))
    at_exit = ", ".join(f"{n} {s}" for s, n in sorted(f["at_exit"].items()))
    return [
        f"Inputs: {f['inputs']}, {f['workers']} workers, SIGTERM while the cine's job ran "
        f"(grace for jobs in hand: {f['grace_s']:g} s).",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| jobs at SIGTERM | {at_signal} |",
        f"| jobs in hand, and what became of them | {in_hand} |",
        f"| shutdown (SIGTERM to the process gone) | {f['shutdown_s']:.2f} s, exit code "
        f"{f['exit_code']} |",
        f"| jobs at exit | {at_exit} (the rest still in the inbox, taken at the restart) |",
        f"| restart: ready / every file done | {f['restart_ready_s']:.2f} s / "
        f"{f['restart_to_all_done_s']:.1f} s |",
        "",
        f"Exactly once: {_check(f['check'])}.",
        "",
        *(
            []
            if any("back in the queue" in j["fate"] for j in f["in_hand"])
            else [
                f"No job here outlasted the {f['grace_s']:g} s grace, so none was put back; "
                "that path (a job unfinished at the stop goes back to the queue, its attempt "
                "not counted) is tested with a held decoder in "
                "`tests/appliance/test_service_faults.py`.",
                "",
            ]
        ),
    ]


def sigterm_past_grace(r: Record) -> list[str]:
    f = r["figures"]
    at_signal = ", ".join(f"{n} {s}" for s, n in sorted(f["at_signal"].items()))
    at_exit = ", ".join(f"{n} {s}" for s, n in sorted(f["at_exit"].items()))
    return [
        f"Inputs: {f['inputs']}; {f['workers']} worker, told to accept the slow JPEG and "
        "give it all the time it needs; SIGTERM while it decodes.",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| jobs at SIGTERM | {at_signal} |",
        f"| shutdown (SIGTERM to the process gone) | {f['shutdown_s']:.2f} s (grace "
        f"{f['grace_s']:g} s), exit code {f['exit_code']} |",
        f"| the job past the grace, at exit | {f['long_job_at_exit']} |",
        f"| processes of the node alive 10 s after it exited / when the restart had done "
        f"every file | {f['processes_left_after_exit']} / "
        f"{f.get('processes_left_when_restart_done', '?')} (its decoding child: an open defect "
        "when not 0) |",
        f"| jobs at exit | {at_exit} |",
        f"| restart: ready / every file done | {f['restart_ready_s']:.2f} s / "
        f"{f['restart_to_all_done_s']:.1f} s (the slow job decoded again) |",
        f"| the job past the grace, at the end | {f['long_job_final']} |",
        "",
        f"Exactly once: {_check(f['check'])}.",
        "",
    ]


def judged(f: dict[str, Any]) -> tuple[str, str]:
    """The figure a soak's memory criterion was judged on: (key, words). The tree's
    anonymous memory since it was recorded; PSS in records from before."""
    if "tree_anon" in f["slope_mib_per_h"]:
        return "tree_anon", "anonymous memory"
    return "tree_pss", "PSS"


def flatness(f: dict[str, Any]) -> str:
    """How a soak's memory reads: flat by its slope, within the noise floor, or not flat."""
    if abs(f["slope_mib_per_h"][judged(f)[0]]) < f["flat_threshold_mib_per_h"]:
        return "flat"
    if f["memory_flat"]:
        return (
            f"flat within the noise floor: the fit changes {f['fitted_growth_mib']:+.1f} MiB "
            "over the window, too short for an hourly rate to mean much"
        )
    return "**not flat**"


def soak(r: Record) -> list[str]:
    f = r["figures"]
    lat, sl = f["latency_s"], f["slope_mib_per_h"]
    key, words = judged(f)
    mem = f[f"{key}_mib"]
    flat = flatness(f)
    timeline = f.get("timeline", [])
    step = max(1, len(timeline) // 10)
    minutes = f["duration_s"] >= 600

    def at(t_s: float) -> str:
        return f"{t_s / 60:.0f} min" if minutes else f"{t_s:.0f} s"

    over_time = ", ".join(f"{at(t['t_s'])}: {t[f'{key}_mib']:.0f}" for t in timeline[::step])
    beside = [k for k in ("tree_pss", "tree_rss", "main_rss") if k != key]
    beside_words = {"tree_pss": "tree PSS", "tree_rss": "tree RSS", "main_rss": "service RSS"}
    return [
        f"One file every {f['interval_s']:g} s for {f['duration_s']:.0f} s ({f['files']} files: "
        f"{f['inputs']}); the tree sampled {f['samples']} times. Slopes are least-squares fits "
        f"after a warm-up of {f['warmup_s']:.0f} s. Flat means the tree's {words} fits a "
        "slope of magnitude below "
        f"{f['flat_threshold_mib_per_h']:g} MiB/h, or a fitted change below "
        f"{f['noise_floor_mib']:g} MiB over the window (the floor for a short soak).",
        "",
        "| figure | value |",
        "| --- | ---: |",
        f"| tree {words}: start / min / max / end (MiB) | {mem['first']:.0f} / "
        f"{mem['min']:.0f} / {mem['max']:.0f} / {mem['last']:.0f} |",
        f"| tree {words} slope | {sl[key]:+.2f} MiB/h ({flat}) |",
        f"| {' / '.join(beside_words[k] for k in beside)} slope (not judged) | "
        f"{' / '.join(f'{sl[k]:+.2f}' for k in beside)} MiB/h |",
        f"| latency p50 / p95, first tenth | {lat['first_tenth']['p50']:.3f} / "
        f"{lat['first_tenth']['p95']:.3f} s |",
        f"| latency p50 / p95, last tenth | {lat['last_tenth']['p50']:.3f} / "
        f"{lat['last_tenth']['p95']:.3f} s |",
        f"| latency p50 / p95 / max, all | {lat['all']['p50']:.3f} / {lat['all']['p95']:.3f} / "
        f"{lat['all']['max']:.3f} s |",
        f"| latency slope | {lat['slope_s_per_h']:+.3f} s/h |",
        f"| queue depth peak | {f['queue_depth_peak']} |",
        "",
        f"Tree {words} over time (MiB): {over_time}.",
        "",
        *_soak_growth(f, timeline),
        *(
            []
            if f["memory_flat"]
            else [
                f"**This run failed its memory criterion**: the tree's {words} grew past the "
                "bound. A defect until its cause is found (`tracemalloc` snapshots of the "
                "service compared across the run show Python-level growth; the rest is native "
                "heaps).",
                "",
            ]
        ),
    ]


def _soak_growth(f: dict[str, Any], timeline: list[dict[str, float]]) -> list[str]:
    """For a soak of ten minutes or more: the judged figure against PSS and RSS after the
    warm-up, and the service's RSS growth per file, so that a slope can be read for what
    it is."""
    warm = [t for t in timeline if t["t_s"] >= f["warmup_s"]]
    if f["duration_s"] < 600 or len(warm) < 2:
        return []
    first, last = warm[0], warm[-1]
    pss = [t["tree_pss_mib"] for t in warm]
    files = f["files"] * (last["t_s"] - first["t_s"]) / f["duration_s"]
    per_file_kib = (last["main_rss_mib"] - first["main_rss_mib"]) * 1024 / max(files, 1)
    anon = (
        f"its anonymous memory goes from {first['tree_anon_mib']:.0f} to "
        f"{last['tree_anon_mib']:.0f} MiB, "
        if "tree_anon_mib" in first
        else ""
    )
    return [
        f"After the warm-up the tree's PSS swings between {min(pss):.0f} and {max(pss):.0f} "
        "MiB (a page shared with other processes, such as the other engineers' runs of the "
        f"same virtualenv's libraries, counts less while they run), while {anon}its RSS goes "
        f"from {first['tree_rss_mib']:.0f} to {last['tree_rss_mib']:.0f} MiB and the "
        f"service's own RSS from {first['main_rss_mib']:.0f} to {last['main_rss_mib']:.0f} "
        f"MiB: about {per_file_kib:.1f} KiB per file taken in.",
        "",
    ]
