"""The node's state for the status bar: is the service running, on what, how busy.

Read from the service's status file (`appliance.service_status.read_service_status`; the service
is usually another process) and the queue counts. Both are cheap; the GUI polls them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from appliance.app.events import Event
from appliance.app.models_panel import BackendInfo


@dataclass(frozen=True)
class NodeStatus:
    node_name: str
    service_running: bool
    service_pid: int | None
    model: str | None
    backend: BackendInfo
    counts: dict[str, int]
    heartbeat_at: str | None = None

    @property
    def waiting(self) -> int:
        return self.counts.get("queued", 0) + self.counts.get("running", 0)


class NodeStatusModel:
    """Polls the service status and the queue. Events: `changed` when the status differs."""

    def __init__(
        self,
        node_name: str,
        service_status: Callable[[], dict[str, Any] | None],
        counts: Callable[[], dict[str, int]],
        last_backend: Callable[[], str | None],
    ) -> None:
        self._node_name = node_name
        self._service_status = service_status
        self._counts = counts
        self._last_backend = last_backend
        self._status: NodeStatus | None = None
        self._token: Hashable | None = None
        self.changed: Event[NodeStatus] = Event()

    @property
    def status(self) -> NodeStatus:
        """The status read by the last `poll` (read now when there was none)."""
        if self._status is None:
            self._status = self._read()
        return self._status

    def poll(self) -> bool:
        """Read the status again; True (and `changed`) when it differs from the last one."""
        status = self._status = self._read()
        backend = status.backend
        token = (
            status.service_running,
            status.model,
            backend,
            tuple(sorted(status.counts.items())),
        )
        if token == self._token:
            return False
        self._token = token
        self.changed.emit(status)
        return True

    def _read(self) -> NodeStatus:
        service = self._service_status()
        counts = self._counts()
        running = bool(service and service.get("alive"))
        if service and running:
            backend = BackendInfo(service.get("backend"), service.get("provider"), "service")
            model = service.get("model")
        else:
            provider = self._last_backend()
            backend = BackendInfo(None, provider, "newest result" if provider else "unknown")
            model = service.get("model") if service else None
        return NodeStatus(
            node_name=self._node_name,
            service_running=running,
            service_pid=int(service["pid"]) if service and running else None,
            model=model,
            backend=backend,
            counts=counts,
            heartbeat_at=service.get("heartbeat_at") if service else None,
        )
