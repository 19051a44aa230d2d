"""bench.reliability: docs/RELIABILITY.md from the figures' JSON files (fast, default run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import reliability
from tests.reliability.figures import machine, percentile, slope, write_figures

CHECK = {
    "files": 1000,
    "jobs": 1000,
    "done": 1000,
    "results_rows": 1000,
    "results_folders": 1000,
    "duplicate_rows": 0,
    "max_attempts": 1,
}


def _burst_figures() -> dict[str, object]:
    return {
        "inputs": "BUSI",
        "files": 1000,
        "workers": 2,
        "drop_s": 0.12,
        "all_taken_s": 30.5,
        "total_s": 125.0,
        "images_per_s": 8.0,
        "queue_depth_peak": 640,
        "untaken_peak": 700,
        "memory_mib": {
            "tree_pss_at_rest": 230.0,
            "tree_pss_peak": 310.0,
            "tree_rss_peak": 420.0,
            "service_rss_peak": 250.0,
            "decoder_child_rss_peak": 80.0,
            "decoder_child_hwm": 81.0,
        },
        "check": CHECK,
    }


def test_the_document_carries_each_figure_its_machine_and_command(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    write_figures(
        tmp_path,
        "burst",
        command="pytest -m 'reliability and slow' tests/reliability/test_burst.py",
        figures={"_loadavg_at_start": [7.5, 6.0, 5.0], **_burst_figures()},
        started=datetime.now(UTC),
    )
    text = reliability.render(reliability.load(tmp_path))
    assert "| throughput | 8.00 images/s |" in text
    assert "| queue depth peak (queued + running) | 640 |" in text
    assert "Reproduce: `pytest -m 'reliability and slow' tests/reliability/test_burst.py`" in text
    assert f"{machine()['cpu_count']} CPUs" in text
    assert "Load average at start 7.5, 6.0, 5.0" in text
    # A run with no figures yet is named, with the command that measures it.
    assert (
        "Not measured yet: `.venv/bin/pytest -m 'reliability and slow' tests/reliability/" in text
    )
    assert "| Store locked by another process | not measured |" in text


def test_a_damaged_figures_file_is_refused_with_its_name(tmp_path: Path) -> None:
    (tmp_path / "burst.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"burst\.json is not JSON"):
        reliability.load(tmp_path)
    (tmp_path / "burst.json").write_text(json.dumps({"figures": {}}))
    with pytest.raises(ValueError, match="not a reliability record"):
        reliability.load(tmp_path)


def test_percentile_and_slope() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 95) == 5.0
    assert slope([0.0, 1.0, 2.0], [1.0, 3.0, 5.0]) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="nothing was measured"):
        percentile([], 50)
    with pytest.raises(ValueError, match="two or more"):
        slope([1.0], [1.0])


def test_runs_that_overlapped_in_time_are_named_and_runs_apart_are_not() -> None:
    def rec(start: str, end: str) -> dict[str, object]:
        return {"started_at": start, "finished_at": end}

    apart = {
        "soak_hour": rec("2026-12-02T19:00:00+00:00", "2026-12-02T20:00:00+00:00"),
        "burst": rec("2026-12-03T07:00:00+00:00", "2026-12-03T07:05:00+00:00"),
    }
    assert reliability.overlaps(apart) == [  # type: ignore[arg-type]
        "No two of these runs overlapped in time (each ran without the others).",
        "",
    ]
    beside = {**apart, "sigkill": rec("2026-12-02T19:30:00+00:00", "2026-12-02T19:40:00+00:00")}
    (line, _) = reliability.overlaps(beside)  # type: ignore[arg-type]
    assert "sigkill with soak_hour" in line
    assert "burst" not in line
