"""Logging setup for the service and the CLI: stderr plus a rotating file in work/logs/.

Every line is written through `SafeFormatter`, so nothing logged (a file name inside an
exception message, a value read from a file) can put a raw newline or terminal escape
into the log: a newline would forge a log line of its own, an escape sequence rewrite the
terminal of whoever reads the log. Log lines name files by pseudonym only
(`appliance.privacy.Pseudonymizer`); this formatter is the safety net under that rule,
not a replacement for it.
"""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path
from types import TracebackType

from appliance.privacy import shown

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class SafeFormatter(logging.Formatter):
    """A `logging.Formatter` that escapes control characters (`appliance.privacy.shown`).

    The line itself is one line; a traceback keeps its own newlines (its lines are the
    interpreter's) but nothing else raw."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return shown(super().formatMessage(record))

    def formatException(self, ei: _ExcInfo) -> str:
        return shown(super().formatException(ei), keep="\n")

    def formatStack(self, stack_info: str) -> str:
        return shown(super().formatStack(stack_info), keep="\n")


def setup_logging(level: str, log_dir: Path | None = None, *, console: bool = True) -> None:
    root = logging.getLogger("fame_node")
    root.setLevel(level)
    root.handlers.clear()
    if console:
        stream = logging.StreamHandler()
        stream.setFormatter(SafeFormatter(FORMAT))
        root.addHandler(stream)
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            log_dir / "fame-node.log", maxBytes=10 << 20, backupCount=5, encoding="utf-8"
        )
        handler.setFormatter(SafeFormatter(FORMAT))
        root.addHandler(handler)
    root.propagate = False
