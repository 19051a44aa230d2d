"""Observer callbacks: how the application model tells its views that something changed.

An `Event` is a list of plain Python callables. Views (the Qt widgets in `gui/`) connect
to the events of the models they show; the models never know who listens, and never
import Qt. A callback that raises is not swallowed: the error reaches whoever emitted, as
a bug should.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Event(Generic[T]):
    """Callbacks called with one value when `emit` is called, in the order connected."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[[T], None]] = []

    def connect(self, callback: Callable[[T], None]) -> Callable[[], None]:
        """Call `callback(value)` on every `emit`; returns a function that disconnects it."""
        self._callbacks.append(callback)

        def disconnect() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return disconnect

    def emit(self, value: T) -> None:
        for callback in list(self._callbacks):
            callback(value)

    def __len__(self) -> int:
        return len(self._callbacks)
