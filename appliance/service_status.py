"""The running service's status file in ``work/``: what it runs on and what it waits for.

The service (`appliance.service.Node`) rewrites it every `HEARTBEAT_S` seconds and at each
model swap; `fame-node status`, the GUI and ``models activate`` read it with
`read_service_status`, which adds whether the service is alive (running, a fresh heartbeat
and its pid present). Reading it needs nothing of the runtime.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any

from appliance.config import NodeConfig

STATUS_FILE = "service-status.json"
HEARTBEAT_S = 5.0


def read_service_status(config: NodeConfig) -> dict[str, Any] | None:
    """The running service's status file, with `alive` added; None if there is none."""
    path = config.folder("work") / STATUS_FILE
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    beat = datetime.fromisoformat(data["heartbeat_at"])
    fresh = (datetime.now(UTC) - beat).total_seconds() < 3 * HEARTBEAT_S
    data["alive"] = bool(data.get("running")) and fresh and _pid_alive(int(data["pid"]))
    return data


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
