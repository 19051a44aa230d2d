"""Fixtures for the model registry tests: keys, and bundles signed with them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.config import NodeConfig, load_config
from appliance.models.signing import generate_keypair
from tests.appliance.models.bundles import placeholder_bundle, sign_bundle


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    """Two key pairs: 'federation' (trusted by the node) and 'stranger' (not)."""
    return {who: generate_keypair(tmp_path / "keys" / who) for who in ("federation", "stranger")}


@pytest.fixture
def signed(tmp_path: Path, keys: dict[str, tuple[Path, Path]]) -> dict[str, Path]:
    """Placeholder bundles tiny@1.0.0 (the initial one), 1.1.0 and 1.2.0, signed by the
    federation's key."""
    out: dict[str, Path] = {}
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        bundle = placeholder_bundle(tmp_path / "src" / version, version=version)
        sign_bundle(bundle, keys["federation"][0])
        out[version] = bundle
    return out


def node_config(
    root: Path, initial: Path, trusted: list[Path], *, require: bool = True
) -> NodeConfig:
    return load_config(
        env={
            "FAME_NODE_PATHS__ROOT": str(root),
            "FAME_NODE_MODELS__BUNDLE": str(initial),
            "FAME_NODE_MODELS__TRUSTED_KEYS": json.dumps([str(p) for p in trusted]),
            "FAME_NODE_MODELS__REQUIRE_SIGNATURE": "true" if require else "false",
        }
    )
