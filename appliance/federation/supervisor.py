"""`SupernodeSupervisor`: the Flower SuperNode that `fame-node run` keeps beside the node.

The SuperNode (``flower-supernode``, flwr 1.42) connects to the federation's SuperLink
and starts this project's ClientApp for each message; the supervisor owns its process:

* **only in the training window** (``federation.window_start`` / ``window_end``, local
  time): started when the window opens, stopped (SIGTERM, then SIGKILL) when it closes;
* **restart with backoff**: a SuperNode that ends by itself is started again after
  ``restart_initial_s``, doubling up to ``restart_max_s``; a run that lasted over
  `STABLE_S` resets the wait;
* **clean stop** with the service: SIGTERM to its whole process group (the SuperNode, the
  SuperExec and ClientApp it spawned), SIGKILL after the grace period;
* **gentle**: started through a tiny exec shim that raises its niceness first (inherited
  by every ClientApp it spawns), with ``OMP_NUM_THREADS`` and friends bounded to
  ``federation.max_threads`` (``FAME_NODE_TRAINING_THREADS`` tells the ClientApp the same
  for ``torch.set_num_threads``), so inference never waits for training;
* **no other traffic**: ``FLWR_TELEMETRY_ENABLED=0``, ``FLWR_DISABLE_UPDATE_CHECK=1``,
  ``ORT_DISABLE_TELEMETRY=1``; its local API bound to 127.0.0.1; no runtime dependency
  installation (flwr's default, never overridden here); ``FLWR_HOME`` in the node's work
  folder;
* **only its own ClientApp code**: on start the supervisor pins the content of the
  installed app bundle (`appliance.federation.app_pin`: ``work/federation/app-pin.json``,
  built from the installed files) and puts ``work/federation/bin`` first on the
  SuperNode's ``PATH``, whose ``flwr-clientapp`` refuses any FAB from the coordinator that
  differs from the pin before a line of it is unpacked or imported;
* **its output in the node log** (logger ``fame_node.federation.supernode``), colour codes
  stripped and control characters escaped, and whether it is connected (the SuperNode
  says ``SuperNode ID`` when registered, ``Connection attempt failed`` when not) kept in
  `SupervisorState` and in ``work/federation/supernode-status.json`` for `fame-node status`.

The node's config reaches the ClientApp as ``--node-config fame-config="PATH"`` (and
``FAME_NODE_CONFIG``), and the ``FAME_NODE_*`` environment passes through.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from appliance.config import NodeConfig
from appliance.federation import FederationError
from appliance.federation.app_pin import (
    PIN_ENV,
    PIN_FILE,
    SHADOW_DIR,
    install_shadow_commands,
    installed_content,
    write_pin,
)
from appliance.privacy import shown

log = logging.getLogger("fame_node.federation")
out_log = logging.getLogger("fame_node.federation.supernode")

STATUS_FILE = Path("federation") / "supernode-status.json"  # under paths.work
STABLE_S = 60.0  # a SuperNode that ran this long before it ended starts with a fresh backoff
STOP_GRACE_S = 20.0
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Runs in the child: lower its priority, then become the SuperNode (argv[2:]).
_NICE_EXEC = "import os, sys; os.nice(int(sys.argv[1])); os.execv(sys.argv[2], sys.argv[2:])"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass
class SupervisorState:
    """What the supervisor knows of its SuperNode (also written to the status file)."""

    state: str = "stopped"  # running | waiting for the window | restarting | stopped
    pid: int | None = None
    connected: bool | None = None  # None: not known yet
    started_at: str | None = None
    restarts: int = 0
    last_exit_code: int | None = None
    next_start_in_s: float | None = None


class SupernodeSupervisor:
    """Runs `flower-supernode` as configured; `start` / `stop` from the service."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        config_path: Path | None = None,
        now: Callable[[], datetime] = datetime.now,
    ) -> None:
        if not config.federation.enabled:
            raise FederationError(
                "federation.enabled = false: there is no SuperNode to supervise; enable the "
                "federation in the config first"
            )
        self.config = config
        self.config_path = None if config_path is None else Path(config_path).resolve()
        self._now = now
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self.status = SupervisorState()
        self._status_path = config.folder("work") / STATUS_FILE

    # -- what is run ---------------------------------------------------------------------

    def program(self) -> Path:
        """The flower-supernode program: configured, else beside this Python."""
        configured = self.config.federation.supernode_command
        program = configured or Path(sys.executable).parent / "flower-supernode"
        if not program.is_file() or not os.access(program, os.X_OK):
            raise FederationError(
                f"the SuperNode program {program} is not there or not executable; install "
                "the federation extra (pip install 'fame-node[federation]') or set "
                "federation.supernode_command"
            )
        return program

    def command(self) -> list[str]:
        """The SuperNode's command line (without the niceness shim)."""
        f = self.config.federation
        root = self.config.paths.root.expanduser()
        cmd = [str(self.program()), "--superlink", str(f.superlink)]
        if f.insecure:
            cmd.append("--insecure")
        if f.root_certificates is not None:
            cmd += ["--root-certificates", str(_under(root, f.root_certificates))]
        if f.private_key is not None:
            cmd += ["--auth-supernode-private-key", str(_under(root, f.private_key))]
        fame_config = "" if self.config_path is None else str(self.config_path)
        cmd += [
            "--node-config",
            f"fame-config={json.dumps(fame_config)}",
            "--isolation",
            "subprocess",
            "--host",
            "127.0.0.1",
            "--port",
            str(f.supernode_port),
        ]
        return cmd

    def environment(self) -> dict[str, str]:
        """The SuperNode's environment: the node's, bounded and with telemetry off."""
        f = self.config.federation
        env = dict(os.environ)
        bin_dir = str(self.program().parent)  # it spawns flower-superexec from PATH
        # The SuperExec starts flwr-clientapp (and any other task program) by name: the
        # node's pinned, checking versions come first (`pin_app`).
        shadow = str(self.config.folder("work") / SHADOW_DIR)
        env["PATH"] = os.pathsep.join([shadow, bin_dir, env.get("PATH", "")])
        env[PIN_ENV] = str(self.config.folder("work") / PIN_FILE)
        threads = str(f.max_threads)
        env.update({name: threads for name in THREAD_VARIABLES})
        env["FAME_NODE_TRAINING_THREADS"] = threads
        env.update(
            FLWR_TELEMETRY_ENABLED="0",
            FLWR_DISABLE_UPDATE_CHECK="1",
            ORT_DISABLE_TELEMETRY="1",
            PYTHONUNBUFFERED="1",  # its lines reach the node log as they are written
            FLWR_HOME=str(self.config.folder("work") / "federation" / "flwr"),
        )
        if self.config_path is not None:
            env["FAME_NODE_CONFIG"] = str(self.config_path)
        return env

    # -- lifecycle -----------------------------------------------------------------------

    def pin_app(self) -> str:
        """Pin the installed ClientApp bundle's content and write the checking programs
        the SuperNode finds first on its PATH; returns the pinned digest."""
        work = self.config.folder("work")
        content = installed_content()
        write_pin(work / PIN_FILE, content)
        install_shadow_commands(work / SHADOW_DIR)
        log.info(
            "ClientApp pinned to the installed app bundle (content digest %s): any other "
            "app bundle from the coordinator is refused",
            content.digest[:16],
        )
        return content.digest

    def start(self) -> None:
        """Check the program is there, pin the app, then supervise on a thread of its own."""
        self.program()
        try:
            self.pin_app()
        except OSError as exc:
            raise FederationError(
                f"cannot write the ClientApp pin under {self.config.folder('work')}: "
                f"{exc.strerror}; the node's work folder must be writable"
            ) from exc
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="fame-supernode", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = STOP_GRACE_S) -> None:
        """Stop the SuperNode (its whole process group) and the supervising thread."""
        self._stop.set()
        self._terminate(timeout)
        if self._thread is not None:
            self._thread.join(timeout + 5.0)
        self._set(state="stopped", pid=None, next_start_in_s=None)

    def _run(self) -> None:
        f = self.config.federation
        backoff = f.restart_initial_s
        while not self._stop.is_set():
            if not f.in_window(self._now()):
                self._terminate(STOP_GRACE_S)
                edge = f.seconds_to_window_edge(self._now()) or 60.0
                self._set(state="waiting for the window", pid=None, next_start_in_s=edge)
                self._stop.wait(min(edge, 60.0))
                continue
            began = time.monotonic()
            try:
                code = self._run_once()
            except (OSError, FederationError) as exc:
                log.error("the SuperNode could not be started: %s", exc)
                code = None
            if self._stop.is_set() or code == _WINDOW_CLOSED:
                continue
            if time.monotonic() - began > STABLE_S:
                backoff = f.restart_initial_s
            log.warning(
                "the SuperNode ended (exit code %s); started again in %.0f s", code, backoff
            )
            self._set(
                state="restarting",
                pid=None,
                connected=False,
                last_exit_code=code,
                restarts=self.status.restarts + 1,
                next_start_in_s=backoff,
            )
            self._stop.wait(backoff)
            backoff = min(backoff * 2, f.restart_max_s)

    def _run_once(self) -> int | None:
        """Run the SuperNode until it ends, the window closes or the node stops."""
        niceness = str(self.config.federation.niceness)
        argv = [sys.executable, "-c", _NICE_EXEC, niceness, *self.command()]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.environment(),
            cwd=self.config.folder("work"),
            start_new_session=True,  # its own process group: stopped with its children
        )
        with self._lock:
            self._proc = proc
        started = datetime.now().astimezone().isoformat(timespec="seconds")
        self._set(state="running", pid=proc.pid, connected=None, started_at=started)
        log.info(
            "SuperNode started (pid %d) for %s, niceness +%s, %d thread(s)",
            proc.pid,
            self.config.federation.superlink,
            niceness,
            self.config.federation.max_threads,
        )
        reader = threading.Thread(target=self._relay, args=(proc.stdout,), daemon=True)
        reader.start()
        window_closed = False
        while proc.poll() is None:
            if self._stop.wait(0.5):
                break
            if not self.config.federation.in_window(self._now()):
                log.info("training window closed: stopping the SuperNode")
                window_closed = True
                break
        if proc.poll() is None:
            self._terminate(STOP_GRACE_S)
        _signal_group(proc.pid, signal.SIGKILL)  # what it left of its group (SuperExec)
        reader.join(5.0)
        with self._lock:
            self._proc = None
        return _WINDOW_CLOSED if window_closed else proc.returncode

    def _terminate(self, timeout: float) -> None:
        with self._lock:
            proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("the SuperNode did not stop within %.0f s; killed", timeout)
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(5.0)
        _signal_group(proc.pid, signal.SIGKILL)  # what it left of its group (SuperExec)

    def _relay(self, stream: IO[bytes] | None) -> None:
        """Its output, line by line, into the node log; connection state from it."""
        if stream is None:
            return
        for raw in iter(stream.readline, b""):
            line = _ANSI.sub("", raw.decode("utf-8", "replace")).rstrip()
            if not line:
                continue
            if "SuperNode ID" in line:
                self._set(connected=True)
            elif "Connection attempt failed" in line or "could not establish" in line:
                self._set(connected=False)
            out_log.info("%s", shown(line))
        stream.close()

    def _set(self, **changes: object) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self.status, key, value)
            data = asdict(self.status)
        data["written_at"] = datetime.now().astimezone().isoformat(timespec="seconds")
        data["supervisor_pid"] = os.getpid()
        try:
            self._status_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._status_path.with_name(f".{self._status_path.name}.tmp")
            tmp.write_text(json.dumps(data), encoding="utf-8")
            os.replace(tmp, self._status_path)
        except OSError as exc:
            log.warning("cannot write the SuperNode status file: %s", exc.strerror)


_WINDOW_CLOSED = -(1 << 30)  # `_run_once`'s answer when it stopped for the window


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _under(root: Path, path: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else root / path


def start_federation(config: NodeConfig) -> SupernodeSupervisor | None:
    """Start supervising the SuperNode when the federation is on (`fame-node run`).

    The config file the ClientApp reads is the one the service was started with
    (``FAME_NODE_CONFIG``, which `fame-node --config` sets); None when it is off.

    A SuperNode that cannot be started (its program missing) is logged, and the node
    serves without it: inference never waits for the federation.
    """
    if not config.federation.enabled:
        return None
    path = os.environ.get("FAME_NODE_CONFIG")
    supervisor = SupernodeSupervisor(config, config_path=Path(path) if path else None)
    try:
        supervisor.start()
    except FederationError as exc:
        log.error("federation: %s; the node runs without it", exc)
        return None
    return supervisor


def read_supernode_status(config: NodeConfig) -> dict[str, Any] | None:
    """The supervisor's status file, or None when there is none (never supervised)."""
    try:
        data: dict[str, Any] = json.loads(
            (config.folder("work") / STATUS_FILE).read_text(encoding="utf-8")
        )
    except (OSError, json.JSONDecodeError):
        return None
    return data


__all__ = [
    "SupernodeSupervisor",
    "SupervisorState",
    "read_supernode_status",
    "start_federation",
]
