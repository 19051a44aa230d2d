"""Fixtures of the federation tests: a tiny starting bundle and the coordinator's key.

The tests marked ``federation`` start a SuperLink (TLS, node authentication) and two or
three SuperNodes and take about 16 minutes together on two cores (`make federation`):
they run when ``-m federation`` asks (CI runs them so), and are skipped with that reason
otherwise; the other tests here are fast and always run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.models.signing import generate_keypair
from tests.trainer.tinybundle import make_tiny_bundle


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "federation" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="starts a real federation (minutes): run `pytest -m federation`")
    for item in items:
        if item.get_closest_marker("federation") is not None and "tests/federation" in item.nodeid:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle with torch weights, trained for one epoch on 48 px images (seconds)."""
    return make_tiny_bundle(tmp_path_factory.mktemp("fed-bundle"))


@pytest.fixture(scope="session")
def federation_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The coordinator's model-signing key, and a folder holding its public key."""
    root = tmp_path_factory.mktemp("fed-keys")
    private, public = generate_keypair(root / "keys" / "federation")
    trusted = root / "trusted"
    trusted.mkdir()
    (trusted / "federation.pub").write_bytes(public.read_bytes())
    return private, trusted
