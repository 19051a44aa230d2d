"""`TimedGrid`: Flower's `Grid` with a round timeout that the legacy workflows honour.

Flower 1.42's legacy `DefaultWorkflow` sends the fit and evaluate instructions with
``grid.send_and_receive(messages)`` and no timeout, ignoring ``ServerConfig.round_timeout``:
it waits until every addressed node has replied. The SuperLink answers for a node only
once the node is offline (its heartbeat older than twice the heartbeat interval, about
60 s). A SuperNode killed mid-round and restarted sooner (the node's supervisor does so
after ``federation.restart_initial_s``) is online again, but the instruction it had
pulled is gone with the killed process: no reply and no error ever come, and the round
would wait forever. Measured here (tests/federation/test_faults.py): without this, the
round never ends.

`TimedGrid` wraps the ServerApp's grid and gives every ``send_and_receive`` without a
timeout the run's ``round-timeout-s``: the round goes on with the replies that came (the
missing node counts neither as a result nor as a failure; `min-nodes` bounds how many a
round starts with). Everything else is the wrapped grid's.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run


class TimedGrid(Grid):
    def __init__(self, grid: Grid, timeout_s: float) -> None:
        if not timeout_s > 0:
            raise ValueError(f"round timeout {timeout_s!r} s: expected a positive number")
        self._grid = grid
        self.timeout_s = timeout_s

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self._grid.send_and_receive(
            messages, timeout=self.timeout_s if timeout is None else timeout
        )

    # -- the rest is the wrapped grid's ------------------------------------------------------
    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self._grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)
