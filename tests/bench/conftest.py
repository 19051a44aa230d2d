"""The benchmark smoke test is ``slow``: skipped (with the reason) unless ``-m slow`` asks."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow benchmark smoke test: run with `pytest -m slow`")
    for item in items:
        if item.get_closest_marker("slow") is not None and "tests/bench" in item.nodeid:
            item.add_marker(skip)
