"""The coordinator's systemd unit (packaging/coordinator/fame-superlink.service) as systemd
reads it: it verifies clean and its exposure stays as low as the node's own units."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "packaging" / "coordinator" / "fame-superlink.service"
INSTALLED_AT = "/opt/fame-node/src/packaging/coordinator/superlink.sh"

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here"
)


def _unit_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout (systemd checks it exists)."""
    text = UNIT.read_text()
    assert INSTALLED_AT in text, "the unit no longer starts superlink.sh from the install path"
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(INSTALLED_AT, str(REPO / "packaging/coordinator/superlink.sh")))
    return unit


def test_the_coordinator_unit_verifies_clean(tmp_path: Path) -> None:
    unit = _unit_here(tmp_path)
    got = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True
    )
    assert got.returncode == 0 and not got.stderr.strip(), got.stderr


def test_the_coordinator_unit_is_hardened(tmp_path: Path) -> None:
    unit = _unit_here(tmp_path)
    got = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
    )
    exposure = float(got.stdout.rsplit(f"{unit.name}: ", 1)[1].split()[0])
    assert exposure <= 3.5, got.stdout[-3000:]
