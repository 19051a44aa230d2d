"""Where the reliability tests put their figures, and the arithmetic they share.

Each test writes one JSON file `<name>.json`: what was measured, on which machine (CPU
model and count, memory, load average before and after, versions, the git commit), when,
and the command that reproduces it. They go into the folder named by the environment
variable FAME_RELIABILITY_OUT (`make reliability` sets docs/reliability), otherwise into
the test's temporary folder, so a plain `pytest -m reliability` leaves the repository
alone. `bench.reliability` turns the folder into docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from appliance.cpus import usable_cpus
from tests.e2e.nodeutil import REPO_ROOT

OUT_ENV = "FAME_RELIABILITY_OUT"
_PACKAGES = ("onnxruntime", "numpy", "pydicom", "opencv-python-headless", "highdicom")


def out_dir(fallback: Path) -> Path:
    """The folder figures go to: $FAME_RELIABILITY_OUT, else `fallback` (made)."""
    chosen = Path(os.environ.get(OUT_ENV) or fallback)
    chosen.mkdir(parents=True, exist_ok=True)
    return chosen


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def machine() -> dict[str, Any]:
    """What the figures were measured on (no host name: the document is published)."""
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "mem_total_gib": _mem_total_gib(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "versions": {p: v for p in _PACKAGES if (v := _version(p))},
        "commit": _commit(),
        "loadavg": list(os.getloadavg()),
    }


def write_figures(
    out: Path, name: str, *, command: str, figures: dict[str, Any], started: datetime
) -> Path:
    """Write `<out>/<name>.json`; the load average is taken again at the end (the machine
    may be shared: a figure is only as good as the machine was quiet)."""
    record = {
        "name": name,
        "command": command,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "loadavg_at_start": figures.pop("_loadavg_at_start", None),
        "figures": figures,
    }
    path = out / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=False, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear between ranks, as numpy's default."""
    if not values:
        raise ValueError("percentile of no values: nothing was measured")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"slope needs two or more (x, y) pairs, got {len(xs)} x, {len(ys)} y")
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("slope of points that all share one x")
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def rounded(value: float, digits: int = 3) -> float:
    return round(float(value), digits)
