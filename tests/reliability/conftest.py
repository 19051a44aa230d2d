"""The reliability runs take minutes (the long ones an hour): skipped, with the reason,
unless ``-m`` names ``reliability`` (``make reliability``, CI's own step); the ``slow``
ones also need ``slow`` in it (``make reliability-long``, ``make bench``)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    chosen = config.getoption("-m") or ""
    skip_all = pytest.mark.skip(reason="reliability figures: run with `pytest -m reliability`")
    skip_slow = pytest.mark.skip(
        reason="long reliability run: `pytest -m 'reliability and slow'` (make reliability-long)"
    )
    for item in items:
        if "tests/reliability" not in item.nodeid:
            continue
        if item.get_closest_marker("reliability") is None:
            continue  # the report's own unit tests run by default
        if "reliability" not in chosen:
            item.add_marker(skip_all)
        elif item.get_closest_marker("slow") is not None and "slow" not in chosen:
            item.add_marker(skip_slow)
