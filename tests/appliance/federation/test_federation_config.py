"""The ``federation`` section: defaults, what an enabled federation needs, the window."""

from __future__ import annotations

from datetime import datetime, time
from pathlib import Path

import pytest

from appliance.config import load_config
from appliance.errors import ConfigError
from appliance.federation.config import FederationConfig


def test_off_by_default_with_the_documented_privacy_defaults() -> None:
    cfg = load_config(env={})
    assert not cfg.federation.enabled
    assert cfg.federation.privacy.mode == "example"
    assert cfg.federation.heldout_share == 0.2
    assert cfg.federation.in_window(datetime(2026, 1, 1, 12, 0))


def test_enabled_needs_a_superlink_and_tls_certificates(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(env={"FAME_NODE_FEDERATION__ENABLED": "true"})
    assert any("federation.superlink is not set" in p for p in err.value.problems)
    toml = tmp_path / "c.toml"
    toml.write_text('[federation]\nenabled = true\nsuperlink = "fl.example.org:9092"\n')
    with pytest.raises(ConfigError) as err:
        load_config(toml, env={})
    assert any("root_certificates" in p for p in err.value.problems)
    toml.write_text(
        '[federation]\nenabled = true\nsuperlink = "fl.example.org:9092"\n'
        'root_certificates = "ca.pem"\n[federation.privacy]\nepsilon_budget = 3.5\n'
    )
    cfg = load_config(toml, env={"FAME_NODE_FEDERATION__PRIVACY__DELTA": "1e-6"})
    assert cfg.federation.privacy.epsilon_budget == 3.5
    assert cfg.federation.privacy.delta == 1e-6


def test_bad_values_name_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(
            env={
                "FAME_NODE_FEDERATION__PRIVACY__MODE": "central",
                "FAME_NODE_FEDERATION__HELDOUT_SHARE": "1.5",
            }
        )
    text = "\n".join(err.value.problems)
    assert "federation.privacy.mode = 'central'" in text
    assert "federation.heldout_share = '1.5'" in text
    with pytest.raises(
        ConfigError, match="window_start = 22:00:00 and window_end = None: give both"
    ):
        load_config(env={"FAME_NODE_FEDERATION__WINDOW_START": "22:00"})


def test_a_window_past_midnight() -> None:
    cfg = FederationConfig(window_start=time(22, 0), window_end=time(6, 0))
    assert cfg.in_window(datetime(2026, 1, 1, 23, 30))
    assert cfg.in_window(datetime(2026, 1, 2, 5, 59))
    assert not cfg.in_window(datetime(2026, 1, 2, 6, 0))
    assert not cfg.in_window(datetime(2026, 1, 2, 12, 0))
    assert cfg.seconds_to_window_edge(datetime(2026, 1, 2, 12, 0)) == 10 * 3600
    assert cfg.seconds_to_window_edge(datetime(2026, 1, 1, 23, 0)) == 7 * 3600
    day = FederationConfig(window_start=time(9, 0), window_end=time(17, 0))
    assert day.in_window(datetime(2026, 1, 1, 9, 0)) and not day.in_window(datetime(2026, 1, 1, 8))
    assert FederationConfig().seconds_to_window_edge(datetime(2026, 1, 1)) is None
