"""What the node is waiting for: the passing faults it is riding out, for `status`.

A worker or the intake that meets a passing fault (disk full, database locked, a decoder
that cannot be started) `report`s it under its scope; the next success in that scope
clears it. The service writes `snapshot()` into its status file, so `fame-node status`
says what the node waits for instead of leaving IT staff to guess from a silent queue.
Thread-safe; one object per process.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

log = logging.getLogger("fame_node.health")


class Conditions:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[tuple[str, str], datetime] = {}

    def report(self, scope: str, condition: str) -> None:
        """`scope` ("intake", "processing") is held up by `condition` (words for a person)."""
        key = (scope, condition)
        with self._lock:
            new = key not in self._active
            if new:
                self._active[key] = datetime.now(UTC)
        if new:
            log.warning("%s is waiting for %s; it resumes by itself", scope, condition)

    def ok(self, scope: str) -> None:
        """Something in `scope` succeeded: whatever it waited for has passed."""
        with self._lock:
            cleared = [c for (s, c) in self._active if s == scope]
            for condition in cleared:
                del self._active[(scope, condition)]
        for condition in cleared:
            log.info("%s resumed (was waiting for %s)", scope, condition)

    def snapshot(self) -> list[dict[str, str]]:
        """The active conditions, oldest first: scope, condition, since (ISO 8601 UTC)."""
        with self._lock:
            items = sorted(self._active.items(), key=lambda kv: kv[1])
        return [
            {"scope": s, "condition": c, "since": t.isoformat(timespec="seconds")}
            for (s, c), t in items
        ]
