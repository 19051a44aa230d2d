"""The SuperNode supervisor with a real flower-supernode against a real SuperLink."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from datetime import time as dtime
from pathlib import Path

import pytest

from appliance.config import NodeConfig, load_config
from appliance.federation import FederationError
from appliance.federation.supervisor import SupernodeSupervisor, read_supernode_status

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(root: Path, superlink_port: int, **federation: str) -> NodeConfig:
    env = {
        "FAME_NODE_PATHS__ROOT": str(root),
        "FAME_NODE_FEDERATION__ENABLED": "true",
        "FAME_NODE_FEDERATION__INSECURE": "true",
        "FAME_NODE_FEDERATION__SUPERLINK": f"127.0.0.1:{superlink_port}",
        "FAME_NODE_FEDERATION__SUPERNODE_PORT": str(_free_port()),
        "FAME_NODE_FEDERATION__RESTART_INITIAL_S": "0.5",
        "FAME_NODE_FEDERATION__NICENESS": "7",
        "FAME_NODE_FEDERATION__MAX_THREADS": "1",
    }
    env.update({f"FAME_NODE_FEDERATION__{k.upper()}": v for k, v in federation.items()})
    config = load_config(env=env)
    config.folder("work").mkdir(parents=True, exist_ok=True)
    return config


@pytest.fixture
def superlink(tmp_path: Path) -> Iterator[int]:
    """A real SuperLink (insecure, in memory) on a free port of 127.0.0.1."""
    port = _free_port()
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    env["FLWR_HOME"] = str(tmp_path / "superlink-home")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # it spawns flower-superexec
    proc = subprocess.Popen(
        [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        _until(lambda: _listening(port), 60, "the SuperLink to listen")
        yield port
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _until(ok: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _proc_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


@pytest.mark.federation
def test_supervised_supernode_connects_restarts_after_sigkill_and_stops_cleanly(
    tmp_path: Path, superlink: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fame_node.federation")
    config = _config(tmp_path / "node", superlink)
    supervisor = SupernodeSupervisor(config, config_path=tmp_path / "node.toml")
    supervisor.start()
    try:
        _until(lambda: supervisor.status.connected is True, 90, "the SuperNode to register")
        first = supervisor.status.pid
        assert first is not None
        # Low priority and bounded threads, telemetry off, its API on 127.0.0.1 only.
        nice = int(Path(f"/proc/{first}/stat").read_text().rsplit(")", 1)[1].split()[16])
        assert nice >= os.nice(0) + 7
        env = _proc_environ(first)
        assert env["OMP_NUM_THREADS"] == "1" and env["FAME_NODE_TRAINING_THREADS"] == "1"
        assert env["FLWR_TELEMETRY_ENABLED"] == "0" and env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
        cmdline = Path(f"/proc/{first}/cmdline").read_bytes().split(b"\0")
        assert b"flower-supernode" in cmdline[0] or any(b"flower-supernode" in a for a in cmdline)
        assert cmdline[cmdline.index(b"--host") + 1] == b"127.0.0.1"
        assert f'fame-config="{tmp_path / "node.toml"}"'.encode() in cmdline
        status = read_supernode_status(config)
        assert status is not None and status["connected"] is True and status["pid"] == first

        os.kill(first, 9)  # killed mid-whatever: the supervisor starts it again
        _until(
            lambda: supervisor.status.pid not in (None, first) and supervisor.status.connected,
            90,
            "the SuperNode to be restarted and registered again",
        )
        assert supervisor.status.restarts == 1
        second = supervisor.status.pid
        assert second is not None
    finally:
        supervisor.stop()
    # The SuperNode and what it spawned are gone (killed children are reaped by init).
    _until(lambda: not _group_alive(second), 15, "the SuperNode's process group to end")
    assert supervisor.status.state == "stopped"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Starting Flower SuperNode" in logged  # its output is in the node log
    assert "SuperNode ended" in logged


def test_outside_the_window_nothing_is_started(tmp_path: Path) -> None:
    config = _config(tmp_path / "node", _free_port(), window_start="22:00", window_end="06:00")
    supervisor = SupernodeSupervisor(config, now=lambda: datetime(2026, 1, 1, 12, 0))
    supervisor.start()
    try:
        _until(lambda: supervisor.status.state == "waiting for the window", 10, "the wait")
        assert supervisor.status.pid is None
        assert supervisor.status.next_start_in_s == pytest.approx(10 * 3600)
    finally:
        supervisor.stop()
    assert config.federation.window_start == dtime(22, 0)


def test_a_disabled_federation_or_a_missing_program_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FederationError, match=r"federation\.enabled = false"):
        SupernodeSupervisor(load_config(env={"FAME_NODE_PATHS__ROOT": str(tmp_path)}))
    config = _config(tmp_path / "node", 1, supernode_command=str(tmp_path / "nothing"))
    with pytest.raises(FederationError, match="not there or not executable"):
        SupernodeSupervisor(config).start()


@pytest.mark.federation
def test_fame_node_run_starts_and_stops_its_supernode(tmp_path: Path, superlink: int) -> None:
    from appliance.service import Node

    config = _config(tmp_path / "node", superlink)
    node = Node(config)
    node.start(watch=False)
    try:
        _until(
            lambda: (read_supernode_status(config) or {}).get("connected") is True,
            90,
            "the service's SuperNode to register",
        )
        pid = int((read_supernode_status(config) or {})["pid"])
    finally:
        node.stop(timeout=10.0)
        node.parts.close()
    _until(lambda: not _group_alive(pid), 15, "the SuperNode to stop with the service")
    assert (read_supernode_status(config) or {}).get("state") == "stopped"
