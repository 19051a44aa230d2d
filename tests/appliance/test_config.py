from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import check_config, load_config
from appliance.cpus import usable_cpus
from appliance.errors import ConfigError


def test_defaults_are_valid_and_relative_folders_resolve_under_root(tmp_path: Path) -> None:
    cfg = load_config(env={"FAME_NODE_PATHS__ROOT": str(tmp_path)})
    assert cfg.processing.workers == 0  # one per usable CPU, at most 16
    assert cfg.processing.worker_count() == min(16, usable_cpus())
    assert cfg.processing.model_copy(update={"workers": 3}).worker_count() == 3
    assert cfg.folder("inbox") == tmp_path / "inbox"
    assert cfg.database_path == tmp_path / "fame-node.sqlite3"


def test_toml_then_environment_override(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('[processing]\nworkers = 3\nmax_frames = 4\n[paths]\ninbox = "/abs/in"\n')
    cfg = load_config(toml, env={"FAME_NODE_PROCESSING__WORKERS": "5"})
    assert cfg.processing.workers == 5  # environment wins
    assert cfg.processing.max_frames == 4  # from the file
    assert cfg.folder("inbox") == Path("/abs/in")  # absolute paths stay


def test_errors_name_key_value_and_expectation(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("[processing]\nworkers = -1\nfoo = 1\n[thresholds]\nlow_confidence = 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(toml, env={})
    problems = err.value.problems
    assert any(
        p.startswith("processing.workers = -1:") and "greater than or equal to 0" in p
        for p in problems
    )
    assert any("processing.foo" in p and "unknown key" in p for p in problems)
    assert any(p.startswith("thresholds.low_confidence = 3:") for p in problems)


def test_bad_environment_value_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(env={"FAME_NODE_PROCESSING__WORKERS": "many"})
    assert "processing.workers = 'many'" in str(err.value)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[processing\nworkers=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, env={})


def test_check_config_reports_unusable_bundle_and_folders(tmp_path: Path) -> None:
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    cfg = load_config(
        env={
            "FAME_NODE_PATHS__ROOT": str(tmp_path),
            "FAME_NODE_PATHS__RESULTS": str(blocker / "results"),
            "FAME_NODE_MODELS__BUNDLE": str(tmp_path / "no-bundle"),
        }
    )
    problems = check_config(cfg)
    assert any(p.startswith("paths.results") and "cannot be created" in p for p in problems)
    assert any("models.bundle" in p and "manifest.json is missing" in p for p in problems)


def test_the_packaged_config_is_valid_and_complete() -> None:
    """packaging/config.toml is what install.sh puts in /etc: it must load as it is."""
    from appliance.config import REPO_ROOT, NodeConfig

    cfg = load_config(REPO_ROOT / "packaging" / "config.toml", env={})
    assert cfg.paths.root == Path("/var/lib/fame-node")
    assert cfg.models.bundle == Path("/opt/fame-node/models/default")
    # every section of the typed config is spelled out for the IT staff who edit it
    text = (REPO_ROOT / "packaging" / "config.toml").read_text()
    for section in NodeConfig.model_fields:
        if section not in ("schema_version", "node_name", "log_level"):
            assert f"[{section}]" in text, section
            # and every key in it, set or shown commented out with its meaning
            keys = type(getattr(cfg, section)).model_fields
            for key in keys:
                assert f"\n{key} =" in text or f"# {key} =" in text, f"{section}.{key}"
