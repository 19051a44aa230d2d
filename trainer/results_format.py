"""Formatting shared by the RESULTS renderers (`trainer.results_doc`,
`trainer.results_ablations`): site names, numbers, intervals, the machines line."""

from __future__ import annotations

from typing import Any

TARGET_NAMES = {
    "busi": "BUSI test (Egypt, LOGIQ E9)",
    "busbra-logiq7": "BUS-BRA Logiq 7 test",
    "busbra-aplio300": "BUS-BRA Aplio 300 test",
    "busbra-usystems": "BUS-BRA U-Systems test",
}


def _f(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ci(ci: list[float] | None) -> str:
    return "" if not ci else f" ({ci[0]:.3f}–{ci[1]:.3f})"


ABLATION_SITES = ("busi", "busbra-logiq7", "busbra-aplio300", "busbra-usystems")


def _machines(records: list[dict[str, Any]]) -> str:
    """One line for the machines of `records`: the distinct kinds, the load range."""
    kinds = sorted({r["machine"].split(", load average")[0] for r in records})
    loads = []
    for r in records:
        tail = r["machine"].partition("load average ")[2].split()
        if tail:
            loads.append(float(tail[0]))
    load = f"; load average {min(loads):.1f}–{max(loads):.1f} at the end of a run" if loads else ""
    return f"Machine: {'; '.join(kinds)}{load} (shared with other work)."
