"""`Closing`: ``with x:`` closes `x` at the end, for everything in the node that has a
`close()` (stores, the decoder pool)."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Closing:
    """Mixin: a context manager whose exit calls `close()`."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
