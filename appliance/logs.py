"""Logging setup for the service and the CLI: stderr plus a rotating file in work/logs/.

Two formats (``logging.format`` in the config): ``text``, one line per record for a
person, and ``json``, one JSON object per line for a log collector (journald, Loki,
Elasticsearch)::

    {"time": "2026-03-01T08:00:00.123Z", "level": "INFO", "logger": "fame_node.pipeline",
     "message": "job 12 (file:3f2a9c01be) done: ...", "thread": "fame-worker-0", "job": 12}

``job`` is the job the thread was processing (`job_context`, set by the pipeline) or one
given with ``extra={"job_id": ...}``; absent otherwise. ``exception`` holds a traceback.

Every record, in either format, is written through `appliance.privacy.shown`, so nothing
logged (a file name inside an exception message, a value read from a file) can put a raw
newline or terminal escape into the log: a newline would forge a log line of its own, an
escape sequence rewrite the terminal of whoever reads the log. Log lines name files by
pseudonym only (`appliance.privacy.Pseudonymizer`); this formatter is the safety net
under that rule, not a replacement for it.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import logging.handlers
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Literal

from appliance.privacy import shown

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]

LogFormat = Literal["text", "json"]
FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

# The job the current thread works on; each worker thread has its own value.
_current_job: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "fame_node_job", default=None
)


@contextlib.contextmanager
def job_context(job_id: int) -> Iterator[None]:
    """Records logged in this block (this thread) carry ``job``: `job_id` in JSON logs."""
    token = _current_job.set(job_id)
    try:
        yield
    finally:
        _current_job.reset(token)


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


class JsonFormatter(SafeFormatter):
    """One JSON object per record, on one line; every text field escaped as `SafeFormatter`
    does (a traceback's newlines become ``\\n`` inside its JSON string)."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        data: dict[str, object] = {
            "time": moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": shown(record.getMessage()),
            "thread": shown(record.threadName or ""),
        }
        job = getattr(record, "job_id", None)
        if job is None:
            job = _current_job.get()
        if isinstance(job, int) and not isinstance(job, bool):
            data["job"] = job
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exception"] = shown(record.exc_text, keep="\n")
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        return json.dumps(data, ensure_ascii=False)


def make_formatter(fmt: LogFormat) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return SafeFormatter(FORMAT)
    raise ValueError(f"unknown log format {fmt!r}; expected 'text' or 'json'")


def setup_logging(
    level: str,
    log_dir: Path | None = None,
    *,
    console: bool = True,
    fmt: LogFormat = "text",
) -> None:
    formatter = make_formatter(fmt)
    root = logging.getLogger("fame_node")
    root.setLevel(level)
    root.handlers.clear()
    if console:
        stream = logging.StreamHandler()
        stream.setFormatter(formatter)
        root.addHandler(stream)
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            log_dir / "fame-node.log", maxBytes=10 << 20, backupCount=5, encoding="utf-8"
        )
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.propagate = False
