"""The install leaves no patient data readable by others: folders 2750, service UMask=0027.

`packaging/data-dirs.sh` (run by install.sh as root) is run here for real on a temporary
node folder, as the current user and group, on a tree an earlier install left open.
"""

from __future__ import annotations

import configparser
import grp
import os
import pwd
import stat
import subprocess
from pathlib import Path

from tests.e2e.nodeutil import REPO_ROOT

PACKAGING = REPO_ROOT / "packaging"
DATA_DIRS = PACKAGING / "data-dirs.sh"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_the_service_runs_with_umask_0027() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    unit.read(PACKAGING / "fame-node.service")
    assert unit["Service"]["UMask"] == "0027"
    assert unit["Service"]["Group"] == "fame-node"


def test_install_sets_up_the_data_folders_with_data_dirs() -> None:
    script = (PACKAGING / "install.sh").read_text()
    subprocess.run(["bash", "-n", str(PACKAGING / "install.sh")], check=True)
    # The folders it makes are checked on a real install in tests/e2e/test_install.py.
    assert '"$SRC/packaging/data-dirs.sh" "$DATA_DIR" "$SERVICE_USER" "$GROUP"' in script
    # data-dirs.sh owns the data folder's permissions (chown -R is for program files only).
    assert not [line for line in script.splitlines() if "chown -R" in line and "DATA" in line]
    assert os.access(DATA_DIRS, os.X_OK)


def test_data_dirs_creates_private_folders_and_closes_an_open_tree(tmp_path: Path) -> None:
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    root = tmp_path / "fame-node"
    (root / "results" / "job-000001").mkdir(parents=True)
    (root / "inbox").mkdir()
    db = root / "fame-node.sqlite3"
    db.write_bytes(b"")
    inbox_file = root / "inbox" / "a.dcm"
    inbox_file.write_bytes(b"")
    outside = tmp_path / "outside"
    outside.write_bytes(b"")
    (root / "results" / "link").symlink_to(outside)
    for p, mode in ((root, 0o755), (root / "results" / "job-000001", 0o755), (db, 0o644)):
        p.chmod(mode)
    for p in (inbox_file, outside):
        p.chmod(0o644)
    proc = subprocess.run(
        [str(DATA_DIRS), f"{root}/", user, group], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("", "work", "work/logs", "results", "quarantine", "outbox", "models"):
        assert _mode(root / name) == 0o2750, (name, oct(_mode(root / name)))
    assert _mode(root / "results" / "job-000001") == 0o2750
    assert _mode(db) == 0o640
    # The inbox is the site's, and a link's target is not the node's to change.
    assert _mode(root / "inbox") == 0o755 and _mode(inbox_file) == 0o644
    assert _mode(outside) == 0o644


def test_data_dirs_says_how_to_call_it() -> None:
    proc = subprocess.run([str(DATA_DIRS)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "usage:" in proc.stderr and "ROOT OWNER GROUP" in proc.stderr
