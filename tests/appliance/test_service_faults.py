"""The service under faults, in-process with real parts: a stop with a job still running,
a job that runs past its limit (the watchdog), a second service on the same store."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.config import NodeConfig, load_config
from appliance.io.types import LoadedImage
from appliance.nodelock import NodeLockedError
from appliance.phantom import PhantomSpec, make_phantom
from appliance.phantom_dicom import write_phantom_png
from appliance.service import Node
from appliance.store.jobs import JobQueue, JobStatus


def _config(root: Path, **env: str) -> NodeConfig:
    return load_config(
        env={
            "FAME_NODE_PATHS__ROOT": str(root),
            "FAME_NODE_PROCESSING__WORKERS": "1",
            "FAME_NODE_INGEST__SETTLE_S": "0.1",
            **env,
        }
    )


class HeldDecode:
    """Wraps the pipeline's decoder; inputs whose spool copy is in `hold` wait for `release`
    (a decoder stuck on one input, as a network share that stops answering would be)."""

    def __init__(self, inner: Callable[[Path, str | None], LoadedImage]) -> None:
        self.inner = inner
        self.hold: set[str] = set()
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, path: Path, suffix: str | None) -> LoadedImage:
        if path.name in self.hold:
            self.entered.set()
            self.release.wait(60)
        return self.inner(path, suffix)


def _png(inbox: Path, seed: int) -> Path:
    path = inbox / f"img-{seed}.png"
    write_phantom_png(path, make_phantom(PhantomSpec(height=120, width=160, seed=seed)))
    return path


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_job_unfinished_at_stop_goes_back_to_the_queue(tmp_path: Path) -> None:
    node = Node(_config(tmp_path))
    held = HeldDecode(node.parts.pipeline.decode)
    node.parts.pipeline.decode = held
    try:
        node.start(watch=False)
        path = _png(node.config.folder("inbox"), 1)
        outcome = node.parts.intake.submit(path)
        held.hold.add(outcome.job.sha256 or "")
        node.submit(path)  # wakes the worker
        assert held.entered.wait(30)
        clean = node.stop(timeout=0.5)
    finally:
        held.release.set()
        time.sleep(0.5)  # the worker leaves its job; its late save is refused
        node.parts.close()
    assert clean is False
    with JobQueue(node.config.database_path) as queue:
        job = queue.get(outcome.id)
    assert job.status is JobStatus.QUEUED and job.attempts == 0  # not the file's fault


def test_the_watchdog_starts_another_worker_past_the_job_limit(tmp_path: Path) -> None:
    node = Node(_config(tmp_path, FAME_NODE_PROCESSING__JOB_TIMEOUT_S="1"))
    held = HeldDecode(node.parts.pipeline.decode)
    node.parts.pipeline.decode = held
    inbox = node.config.folder("inbox")
    try:
        node.start(watch=False)
        stuck = node.parts.intake.submit(_png(inbox, 2))
        held.hold.add(stuck.job.sha256 or "")
        node.submit(inbox / "img-2.png")
        assert held.entered.wait(30)
        # One worker, held: a good image behind it is still done, by the replacement.
        good = node.parts.intake.submit(_png(inbox, 3))
        _wait(lambda: node.parts.queue.get(good.id).status is JobStatus.DONE, 60, "the good job")
        waits = [(w["scope"], w["condition"]) for w in node.parts.health.snapshot()]
        assert (f"job {stuck.id}", "its run past processing.job_timeout_s") in waits
        held.release.set()
        _wait(lambda: node.parts.queue.get(stuck.id).status is JobStatus.DONE, 60, "the held job")
        assert node.parts.health.snapshot() == []
    finally:
        held.release.set()
        node.stop(timeout=10)
        node.parts.close()


def test_a_second_service_on_the_same_store_refuses_and_names_the_first(tmp_path: Path) -> None:
    first = Node(_config(tmp_path))
    second = Node(_config(tmp_path))
    try:
        first.start(watch=False)
        with pytest.raises(NodeLockedError, match=r"pid \d+ on .* holds .*\.lock") as info:
            second.start(watch=False)
        assert info.value.holder is not None
        assert info.value.holder["pid"] == os.getpid()
    finally:
        first.stop(timeout=10)
        first.parts.close()
        second.parts.close()
    # Once the first has stopped, the lock is free again.
    third = Node(_config(tmp_path))
    try:
        third.start(watch=False)
    finally:
        third.stop(timeout=10)
        third.parts.close()


def test_a_dicom_port_already_taken_stops_the_start_with_a_clear_error(tmp_path: Path) -> None:
    import socket

    from appliance.errors import ConfigError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        node = Node(
            _config(
                tmp_path,
                FAME_NODE_DICOM_NET__ENABLED="true",
                FAME_NODE_DICOM_NET__PORT=str(port),
                FAME_NODE_DICOM_NET__ALLOWED_CALLERS='["SCANNER"]',
            )
        )
        try:
            with pytest.raises(ConfigError, match=rf"dicom_net.port = {port} .* cannot be bound"):
                node.start()
        finally:
            node.parts.close()
    again = Node(_config(tmp_path))  # the failed start released the store's lock
    try:
        again.start(watch=False)
    finally:
        again.stop(timeout=10)
        again.parts.close()


def test_a_locked_store_at_intake_is_a_wait_the_status_names(tmp_path: Path) -> None:
    import sqlite3

    from appliance.errors import TransientError

    node = Node(_config(tmp_path))
    node.start(watch=False)
    try:
        path = _png(node.config.folder("inbox"), 7)
        locker = sqlite3.connect(node.config.database_path, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")  # another process holds the database
        try:
            with pytest.raises(TransientError) as info:
                node._on_candidate(path)
            assert "database" in info.value.condition
            scopes = {c["scope"]: c for c in node.parts.health.snapshot()}
            assert "intake" in scopes and "database" in str(scopes["intake"])
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        node._on_candidate(path)  # the lock gone, the file is taken and the wait cleared
        assert "intake" not in {c["scope"] for c in node.parts.health.snapshot()}
    finally:
        node.stop()
