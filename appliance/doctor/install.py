"""Doctor check of the installation: what `packaging/install.sh` recorded, the log folder,
log rotation, the systemd units, and whether doctor runs as the node's own user.

install.sh writes ``install.json`` next to the virtualenv it creates (``<prefix>/.venv``,
so ``<prefix>/install.json`` is found from `sys.prefix`): the folders, the service user,
the extras it chose and why, and where it put the units and the logrotate file. A node
run from a checkout has none; its log is rotated by the node itself (10 MiB x 5).
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from appliance.config import NodeConfig
from appliance.doctor.findings import Finding

RECORD = "install.json"
LOGROTATE_BINARIES = ("/usr/sbin/logrotate", "/sbin/logrotate")


def install_record() -> tuple[Path, dict[str, Any]] | None:
    """The record install.sh left for this virtualenv, or None (not installed by it)."""
    path = Path(sys.prefix).parent / RECORD
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return (path, data) if isinstance(data, dict) else None


def check_logs(config: NodeConfig) -> Iterator[Finding]:
    logs = config.folder("work") / "logs"
    if not logs.is_dir():
        parent_ok = os.access(logs.parent, os.W_OK | os.X_OK)
        yield Finding(
            "logs",
            "ok" if parent_ok else "fail",
            f"{logs} is created at the first start"
            if parent_ok
            else f"{logs} cannot be created: {logs.parent} is not writable by this user",
            ""
            if parent_ok
            else "run packaging/data-dirs.sh, or give the node's user write "
            f"access to {logs.parent}",
        )
        return
    if not os.access(logs, os.W_OK | os.X_OK):
        yield Finding(
            "logs",
            "fail",
            f"the log folder {logs} is not writable by this user: the service cannot start",
            "chown the folder to the node's user (packaging/data-dirs.sh repairs it)",
        )
        return
    open_files = [p.name for p in logs.iterdir() if p.is_file() and p.stat().st_mode & 0o007]
    if open_files:
        yield Finding(
            "logs",
            "warn",
            f"{len(open_files)} log file(s) in {logs} are readable by other users",
            f"chmod o-rwx {logs}/*; the unit's UMask=0027 keeps new ones closed",
        )
    else:
        yield Finding("logs", "ok", f"log folder {logs} writable, closed to other users")


def check_install(config: NodeConfig) -> Iterator[Finding]:
    found = install_record()
    if found is None:
        yield Finding(
            "install",
            "ok",
            "not installed by packaging/install.sh (a checkout): the node rotates its own "
            "log (10 MiB x 5), no systemd unit is checked",
        )
        return
    path, rec = found
    extras = ", ".join(rec.get("extras") or []) or "none"
    yield Finding(
        "install",
        "ok",
        f"installed {rec.get('installed_at', '?')} into {rec.get('prefix')}; extras: "
        f"{extras} ({rec.get('extras_reason', '?')})",
    )
    user = str(rec.get("user", ""))
    me = getpass.getuser()
    if user and me != user:
        yield Finding(
            "install",
            "warn",
            f"doctor runs as {me}, not as the service user {user}: what it finds "
            "writable or readable may differ for the service",
            f"runuser -u {user} -- {sys.prefix}/bin/fame-node doctor",
        )
    for key, what in (("unit", "systemd unit"), ("supernode_unit", "SuperNode unit")):
        unit = rec.get(key)
        if unit and not Path(unit).is_file():
            yield Finding(
                "install",
                "warn",
                f"the {what} {unit} is gone",
                "run packaging/install.sh again (it keeps the config)",
            )
    yield from _logrotate(Path(str(rec.get("logrotate", ""))), config, path)


def _logrotate(conf: Path, config: NodeConfig, record: Path) -> Iterator[Finding]:
    logs = config.folder("work") / "logs"
    if not conf.is_file():
        yield Finding(
            "logrotate",
            "warn",
            f"no logrotate file at {conf} (recorded in {record}): logs are kept only by "
            "the node's own size cap",
            "run packaging/install.sh again (it installs packaging/fame-node.logrotate)",
        )
        return
    text = conf.read_text(encoding="utf-8", errors="replace")
    mode = conf.stat().st_mode
    if str(logs) not in text:
        yield Finding(
            "logrotate",
            "warn",
            f"{conf} does not rotate the node's log folder {logs}",
            "run packaging/install.sh again with the same --data-dir as the config's paths.root",
        )
    elif mode & (stat.S_IWGRP | stat.S_IWOTH):
        # logrotate runs as root and refuses (rightly) a config others may change.
        yield Finding(
            "logrotate",
            "warn",
            f"{conf} is writable by others (mode {stat.filemode(mode)}): logrotate skips it",
            f"chmod 0644 {conf}",
        )
    else:
        yield Finding("logrotate", "ok", f"{conf} rotates {logs}")
    if not (shutil.which("logrotate") or any(Path(b).exists() for b in LOGROTATE_BINARIES)):
        yield Finding(
            "logrotate",
            "warn",
            "logrotate is not installed: the file is not acted on",
            "apt install logrotate (or your distribution's package)",
        )
