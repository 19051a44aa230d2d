"""The soak: a steady trickle of files into a live node; memory and latency must stay flat.

One distinct image is renamed into the inbox every FAME_RELIABILITY_SOAK_INTERVAL_S (1 s)
for the soak's duration: FAME_RELIABILITY_SOAK_S (150 s) for the short soak of the default
`reliability` run, FAME_RELIABILITY_SOAK_LONG_S (3600 s) for the hour-long one (`slow`,
`make bench`). The node's process tree is sampled every 2 s (anonymous memory, RSS and PSS
of the service and its decoding children, the queue). Latency is drop -> job `done` (the
watcher's settle time included), per file.

Flat means, after the first tenth (warm-up: ONNX Runtime's arenas, the decoders' first
images; the first tenth, at least `WARMUP_MIN_S`): the tree's anonymous memory (heaps and
arenas, what a leak grows; `harness.Sample`) fitted by least squares grows by less than
`RSS_FLAT_MIB_PER_H` per hour, or by less than `RSS_NOISE_MIB` over the whole window (the
floor for a short soak, where an hourly rate is an extrapolation). PSS and RSS are reported
beside it but not judged: PSS moves by tens of MiB when another process mapping the same
libraries (the test runner, a parallel interpreter) starts or exits, RSS when the kernel
drops or reads back file pages, neither of which is the node's growth. For the
p95 latency, the last tenth within `LATENCY_GROWTH` of the first tenth (plus `LATENCY_SLACK_S`
for a shared machine). Every file must be done exactly once.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from appliance.store.db import from_db_time as parse_time
from tests.reliability.figures import out_dir, percentile, rounded, slope, write_figures
from tests.reliability.harness import LiveNode, Sampler, by_status, drop, mib, wait_until
from tests.reliability.inputs import Inputs

pytestmark = pytest.mark.reliability

RSS_FLAT_MIB_PER_H = 16.0
RSS_NOISE_MIB = 8.0
WARMUP_MIN_S = 30.0
LATENCY_GROWTH = 2.0
LATENCY_SLACK_S = 1.0
SAMPLE_EVERY_S = 2.0


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def _tenths(values: list[float]) -> tuple[list[float], list[float]]:
    n = max(1, len(values) // 10)
    return values[:n], values[-n:]


def run_soak(tmp_path: Path, name: str, duration_s: float, command: str) -> dict[str, object]:
    interval_s = _env_float("FAME_RELIABILITY_SOAK_INTERVAL_S", 1.0)
    started = datetime.now(UTC)
    load0 = list(os.getloadavg())
    inputs = Inputs.create(tmp_path / "staging")
    node = LiveNode(tmp_path / "node")
    dropped: dict[str, datetime] = {}
    try:
        ready_s = node.start()
        with Sampler(node.pid, node.db, interval_s=SAMPLE_EVERY_S) as sampler:
            t0 = time.monotonic()
            i = 0
            while (due := t0 + i * interval_s) < t0 + duration_s:
                time.sleep(max(0.0, due - time.monotonic()))
                path = inputs.make(i)
                dropped[path.name] = drop(path, node.inbox)
                i += 1
            t_last = time.monotonic()

            def all_done() -> bool:
                rows = node.jobs()
                return len(rows) >= len(dropped) and all(r["status"] != "queued" for r in rows)

            drain_s = wait_until(lambda: all_done() and not _running(node), 300, "the soak drained")
            t_end = time.monotonic()
        code, stop_s = node.terminate()
    finally:
        node.ensure_stopped()

    rows = node.jobs()
    assert code == 0, node.tail()
    names = [Path(str(r["path"])).name for r in rows]
    assert sorted(names) == sorted(dropped), "one job per dropped file, and only those"
    assert by_status(rows) == {"done": len(dropped)}, by_status(rows)

    order = sorted(rows, key=lambda r: dropped[Path(str(r["path"])).name])
    latency = [
        (parse_time(str(r["finished_at"])) - dropped[Path(str(r["path"])).name]).total_seconds()
        for r in order
    ]
    first, last = _tenths(latency)
    warm_from = t0 + max((t_last - t0) / 10, WARMUP_MIN_S)
    warm = [s for s in sampler.samples if s.at >= warm_from]
    hours = [(s.at - t0) / 3600 for s in warm]
    anon_slope = slope(hours, [mib(s.tree_anon) for s in warm])
    pss_slope = slope(hours, [mib(s.tree_pss) for s in warm])
    rss_slope = slope(hours, [mib(s.tree_rss) for s in warm])
    main_slope = slope(hours, [mib(s.main_rss) for s in warm])
    skip = len(latency) // 10
    lat_hours = [
        (dropped[Path(str(r["path"])).name] - started).total_seconds() / 3600 for r in order
    ][skip:]
    lat_slope = slope(lat_hours, latency[skip:])
    window_h = (warm[-1].at - warm[0].at) / 3600
    growth = anon_slope * window_h
    flat = abs(anon_slope) < RSS_FLAT_MIB_PER_H or abs(growth) < RSS_NOISE_MIB
    # A leak is growth: memory handed back (a decoder trimming its heap) does not fail it.
    no_growth = anon_slope < RSS_FLAT_MIB_PER_H or growth < RSS_NOISE_MIB
    depth = [sum((s.counts or {}).get(k, 0) for k in ("queued", "running")) for s in warm]
    timeline = [
        {
            "t_s": round(s.at - t0, 1),
            "tree_anon_mib": mib(s.tree_anon),
            "tree_pss_mib": mib(s.tree_pss),
            "tree_rss_mib": mib(s.tree_rss),
            "main_rss_mib": mib(s.main_rss),
        }
        for s in sampler.samples[:: max(1, len(sampler.samples) // 120)]
    ]
    figures: dict[str, object] = {
        "_loadavg_at_start": load0,
        "inputs": inputs.source,
        "duration_s": rounded(t_last - t0, 1),
        "interval_s": interval_s,
        "files": len(dropped),
        "ready_s": rounded(ready_s, 2),
        "drain_s": rounded(drain_s, 2),
        "stop_s": rounded(stop_s, 2),
        "samples": len(sampler.samples),
        "tree_anon_mib": {
            "first": mib(sampler.samples[0].tree_anon),
            "min": mib(min(s.tree_anon for s in warm)),
            "max": mib(max(s.tree_anon for s in warm)),
            "last": mib(sampler.samples[-1].tree_anon),
        },
        "tree_pss_mib": {
            "first": mib(sampler.samples[0].tree_pss),
            "min": mib(min(s.tree_pss for s in warm)),
            "max": mib(max(s.tree_pss for s in warm)),
            "last": mib(sampler.samples[-1].tree_pss),
        },
        "tree_rss_peak_mib": mib(max(s.tree_rss for s in sampler.samples)),
        "slope_mib_per_h": {
            "tree_anon": rounded(anon_slope, 2),
            "tree_pss": rounded(pss_slope, 2),
            "tree_rss": rounded(rss_slope, 2),
            "main_rss": rounded(main_slope, 2),
        },
        "flat_threshold_mib_per_h": RSS_FLAT_MIB_PER_H,
        "noise_floor_mib": RSS_NOISE_MIB,
        "warmup_s": rounded(warm_from - t0, 1),
        "fitted_growth_mib": rounded(growth, 2),
        "memory_flat": flat,
        "latency_s": {
            "first_tenth": {
                "p50": rounded(percentile(first, 50)),
                "p95": rounded(percentile(first, 95)),
            },
            "last_tenth": {
                "p50": rounded(percentile(last, 50)),
                "p95": rounded(percentile(last, 95)),
            },
            "all": {
                "p50": rounded(percentile(latency, 50)),
                "p95": rounded(percentile(latency, 95)),
                "max": rounded(max(latency)),
            },
            "slope_s_per_h": rounded(lat_slope, 3),
        },
        "queue_depth_peak": max(depth, default=0),
        "wall_s": rounded(t_end - t0, 1),
        "timeline": timeline,
    }
    write_figures(
        out_dir(tmp_path / "figures"), name, command=command, figures=figures, started=started
    )

    assert no_growth, (
        f"memory not flat: the tree's anonymous memory grew {anon_slope:+.1f} MiB/h (bound "
        f"{RSS_FLAT_MIB_PER_H}), {growth:+.1f} MiB over {window_h * 60:.1f} min after warm-up "
        f"(floor {RSS_NOISE_MIB}); PSS {pss_slope:+.1f} MiB/h, RSS {rss_slope:+.1f} MiB/h"
    )
    p95_first, p95_last = percentile(first, 95), percentile(last, 95)
    assert p95_last <= LATENCY_GROWTH * p95_first + LATENCY_SLACK_S, (
        f"latency grew: p95 {p95_first:.2f} s in the first tenth, {p95_last:.2f} s in the last"
    )
    return figures


def _running(node: LiveNode) -> bool:
    return any(r["status"] == "running" for r in node.jobs())


@pytest.mark.timeout(1800)
def test_soak_short(tmp_path: Path) -> None:
    duration = _env_float("FAME_RELIABILITY_SOAK_S", 150.0)
    run_soak(tmp_path, "soak_short", duration, "make reliability  # FAME_RELIABILITY_SOAK_S=150")


@pytest.mark.slow
@pytest.mark.timeout(2 * 3600)
def test_soak_hour(tmp_path: Path) -> None:
    duration = _env_float("FAME_RELIABILITY_SOAK_LONG_S", 3600.0)
    run_soak(
        tmp_path,
        "soak_hour",
        duration,
        ".venv/bin/pytest -m 'reliability and slow' tests/reliability/test_soak.py  # 3600 s",
    )
