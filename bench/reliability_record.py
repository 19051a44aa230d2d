"""One reliability record (the JSON a `tests/reliability` run writes): loading, provenance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

Record = dict[str, Any]


def load(folder: Path) -> dict[str, Record]:
    """name -> record, for every `*.json` in `folder` (none: an empty dict)."""
    out: dict[str, Record] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ValueError(f"{path} is not JSON ({exc}); rerun the test that writes it") from exc
        if not isinstance(record, dict) or "figures" not in record or "name" not in record:
            raise ValueError(f"{path} has no 'name' / 'figures': not a reliability record")
        out[str(record["name"])] = record
    return out


def _load_text(load: list[float] | None) -> str:
    return ", ".join(f"{x:.1f}" for x in load) if load else "?"


def provenance(r: Record) -> list[str]:
    m = r["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
    return [
        f"*Measured {r['started_at']} to {r['finished_at']} at commit `{m.get('commit')}` on "
        f"{m['cpu_model']}, {m['cpu_count']} CPUs ({m['usable_cpus']} usable), "
        f"{m['mem_total_gib']} GiB, Linux {m['kernel']}, Python {m['python']}, {versions}. "
        f"Load average at start {_load_text(r.get('loadavg_at_start'))}, at the end "
        f"{_load_text(m.get('loadavg'))} (1, 5, 15 min).*",
        "",
        f"Reproduce: `{r['command']}`",
        "",
    ]


def _check(c: dict[str, Any]) -> str:
    return (
        f"{c['files']} files, {c['jobs']} jobs, {c['done']} done, {c['results_rows']} results "
        f"rows (no duplicate), {c['results_folders']} results folders, all matching the store; "
        f"highest attempt count {c['max_attempts']}"
    )
