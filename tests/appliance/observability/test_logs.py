"""JSON logs: one object per line, the job and thread where known, nothing raw."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.logs import job_context, make_formatter, setup_logging


@pytest.fixture
def json_log(tmp_path: Path) -> Iterator[Path]:
    setup_logging("DEBUG", tmp_path, console=False, fmt="json")
    yield tmp_path / "fame-node.log"
    setup_logging("INFO", None, console=False)


def _lines(path: Path) -> list[dict[str, object]]:
    for handler in logging.getLogger("fame_node").handlers:
        handler.flush()
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_one_object_per_line_with_time_level_logger_thread(json_log: Path) -> None:
    logging.getLogger("fame_node.test").info("hello %s", "world")
    (rec,) = _lines(json_log)
    assert rec["message"] == "hello world"
    assert (rec["level"], rec["logger"]) == ("INFO", "fame_node.test")
    assert rec["thread"] == threading.current_thread().name
    assert isinstance(rec["time"], str) and rec["time"].endswith("Z") and "T" in rec["time"]
    assert "job" not in rec


def test_the_job_comes_from_the_context_or_extra_and_stays_in_its_thread(
    json_log: Path,
) -> None:
    log = logging.getLogger("fame_node.test")

    def other_thread() -> None:
        log.info("elsewhere")

    with job_context(42):
        log.info("in the job")
        t = threading.Thread(target=other_thread, name="fame-worker-9")
        t.start()
        t.join()
    log.info("after")
    log.info("given", extra={"job_id": 7})
    recs = _lines(json_log)
    by_message = {r["message"]: r for r in recs}
    assert by_message["in the job"]["job"] == 42
    assert "job" not in by_message["elsewhere"] and by_message["elsewhere"]["thread"] == (
        "fame-worker-9"
    )
    assert "job" not in by_message["after"]
    assert by_message["given"]["job"] == 7


def test_newlines_escapes_and_bidi_controls_never_reach_the_log_raw(json_log: Path) -> None:
    log = logging.getLogger("fame_node.test")
    forged = 'x\n{"level": "INFO", "message": "forged"}\x1b[2J\u202e'
    try:
        raise ValueError(forged)
    except ValueError:
        log.exception("failed: %s", forged)
    raw = json_log.read_text(encoding="utf-8")
    assert raw.count("\n") == 1  # one record, one line
    assert "\x1b" not in raw and "\u202e" not in raw
    (rec,) = _lines(json_log)
    assert isinstance(rec["message"], str) and "\\x1b" in rec["message"]
    assert "\\u202e" in rec["message"] and "\\n" in rec["message"]
    exception = rec["exception"]
    assert isinstance(exception, str) and exception.startswith("Traceback")
    assert "ValueError" in exception and "\x1b" not in exception


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="expected 'text' or 'json'"):
        make_formatter("xml")  # type: ignore[arg-type]
