"""The doctor's installation checks against a record like the one install.sh writes:
logrotate file present and rotating this node's logs, units there, doctor run as the
service user; the log folder writable."""

from __future__ import annotations

import getpass
import json
import sys
from pathlib import Path

import pytest

from appliance.config import NodeConfig, load_config
from appliance.doctor import Finding
from appliance.doctor.install import check_install, check_logs


def _installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, user: str) -> NodeConfig:
    prefix = tmp_path / "opt"
    (prefix / ".venv").mkdir(parents=True)
    monkeypatch.setattr(sys, "prefix", str(prefix / ".venv"))  # the venv install.sh made
    data = tmp_path / "var"
    (data / "work" / "logs").mkdir(parents=True)
    units = tmp_path / "units"
    units.mkdir()
    (units / "fame-node.service").write_text("[Service]\n")
    rotate = tmp_path / "logrotate.d" / "fame-node"
    rotate.parent.mkdir()
    rotate.write_text(f"{data}/work/logs/fame-node.log {{\n    weekly\n}}\n")
    rotate.chmod(0o644)
    record = {
        "installed_at": "2026-12-01T10:00:00+00:00",
        "prefix": str(prefix),
        "user": user,
        "extras": [],
        "extras_reason": "no NVIDIA GPU",
        "unit": str(units / "fame-node.service"),
        "supernode_unit": None,
        "logrotate": str(rotate),
    }
    (prefix / "install.json").write_text(json.dumps(record))
    return load_config(env={"FAME_NODE_PATHS__ROOT": str(data)})


def _levels(findings: list[Finding]) -> list[str]:
    return [f.level for f in findings]


def test_a_checkout_has_no_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "nowhere" / ".venv"))
    (f,) = check_install(load_config(env={"FAME_NODE_PATHS__ROOT": str(tmp_path)}))
    assert f.level == "ok" and "not installed by packaging/install.sh" in f.detail


def test_a_complete_install_is_green(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _installed(tmp_path, monkeypatch, getpass.getuser())
    findings = list(check_install(config))
    assert set(_levels(findings)) == {"ok"}, findings
    assert any("rotates" in f.detail for f in findings if f.check == "logrotate")
    assert _levels(list(check_logs(config))) == ["ok"]


def test_what_is_missing_or_wrong_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _installed(tmp_path, monkeypatch, "fame-node-elsewhere")
    rotate = tmp_path / "logrotate.d" / "fame-node"
    (tmp_path / "units" / "fame-node.service").unlink()
    rotate.write_text("/var/log/other.log {\n}\n")
    warns = [f for f in check_install(config) if f.level == "warn"]
    assert any("not as the service user fame-node-elsewhere" in f.detail for f in warns)
    assert any("runuser -u fame-node-elsewhere" in f.fix for f in warns)
    assert any("systemd unit" in f.detail and "is gone" in f.detail for f in warns)
    assert any("does not rotate the node's log folder" in f.detail for f in warns)
    rotate.unlink()
    warns = [f for f in check_install(config) if f.level == "warn"]
    assert any(f"no logrotate file at {rotate}" in f.detail for f in warns)


def test_log_files_open_to_others_warn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _installed(tmp_path, monkeypatch, getpass.getuser())
    log = config.folder("work") / "logs" / "fame-node.log"
    log.write_text("x\n")
    log.chmod(0o644)
    (f,) = check_logs(config)
    assert f.level == "warn" and "readable by other users" in f.detail and "UMask" in f.fix
