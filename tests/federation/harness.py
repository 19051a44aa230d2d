"""A real federation on 127.0.0.1 for the tests: SuperLink, SuperNodes, nodes and a run.

Everything is a separate process started from this venv's Flower 1.42 programs, through
the coordinator's own scripts (`packaging/coordinator/`), with telemetry and update checks
off: `Coordinator` makes a test CA and the SuperLink's certificate (``make_certs.py
test-ca``), the flwr CLI connection (``connect.sh``); `start_superlink` runs
``superlink.sh`` (TLS, ``--enable-supernode-auth``, ``--database`` where persistent);
`Coordinator.register` admits a node's ECDSA P-384 key (``register-node.sh``, after
``make_certs.py node-key``); `run_app` starts the ServerApp (``run.sh``). SuperNodes
connect over TLS with their authentication key, either started here (`supernode_argv`) or
by a node's own ``fame-node run`` (its supervisor; `start_fame_node`).

Each node is a folder with its own ``config.toml`` (store, work folder, federation section,
a labelled manifest of its own images) and its own copy of the starting bundle. File names
of the nodes' images carry made-up patient names and ids (`PATIENT_MARKERS`) so that a test
can look for them in what a node sent.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
APP_DIR = REPO / "trainer" / "federated" / "app"
COORDINATOR = REPO / "packaging" / "coordinator"
PATIENT_MARKERS = ("DOE^JANE", "PID483920", "SMITH^ANNA", "PID771204", "ROE^MARY", "PID118811")


def flower_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_HOME=str(home),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        # The SuperLink and SuperNodes start `flower-superexec` (and it the apps) from PATH.
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    env.pop("FAME_NODE_PATHS__ROOT", None)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def write_site(root: Path, seed: int, n: int, markers: Sequence[str], size: int = 48) -> Path:
    """A labelled manifest of `n` synthetic images (train / val) named after patients."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    rows = []
    labels = ("normal", "benign", "malignant")
    for i in range(n):
        label = labels[i % 3]
        img = rng.normal(90 + 30 * (i % 3), 25, (size, size)).clip(0, 255).astype(np.uint8)
        mask = np.zeros((size, size), np.uint8)
        if label != "normal":
            r, c = rng.integers(8, size - 20, 2)
            mask[r : r + 12, c : c + 12] = 255
            img[mask > 0] = (img[mask > 0] * 0.4).astype(np.uint8)  # hypoechoic lesion
        name = f"{markers[i % len(markers)]} {label} {i}"
        Image.fromarray(img).save(root / f"{name}.png")
        Image.fromarray(mask).save(root / f"{name}_mask.png")
        split = "val" if i % 4 == 3 else "train"
        rows.append(
            {"image": f"{name}.png", "label": label, "masks": f"{name}_mask.png", "split": split}
        )
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "label", "masks", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


@dataclass
class NodeSpec:
    root: Path
    config: Path
    manifest: Path
    reply_log: Path
    markers: tuple[str, ...]


def write_node(
    root: Path,
    bundle: Path,
    trusted_keys: Path,
    superlink: str,
    *,
    seed: int,
    n_images: int,
    markers: Sequence[str],
    budget: float = 50.0,
    noise_multiplier: float = 1.0,
    root_certificates: Path | None = None,
    private_key: Path | None = None,
    supernode_port: int | None = None,
) -> NodeSpec:
    """A node folder; `n_images` 0 gives a node with no training cases at all."""
    root.mkdir(parents=True)
    shutil.copytree(bundle, root / "bundle")
    if n_images:
        manifest = write_site(root / "site", seed, n_images, markers)
        manifests = f'manifests = ["{manifest}"]\n'
    else:
        manifest, manifests = root / "site" / "manifest.csv", ""
        manifest.parent.mkdir()
    tls = (
        f'root_certificates = "{root_certificates}"\n' if root_certificates else "insecure = true\n"
    )
    if private_key is not None:
        tls += f'private_key = "{private_key}"\n'
    if supernode_port is not None:
        # fame-node run's supervisor: a SuperNode that ended is started again after 1 s and
        # then at most every 5 s (the SuperLink refuses a killed node's key until its
        # heartbeat has expired, about 60 s: it keeps trying at that pace).
        tls += f"supernode_port = {supernode_port}\nrestart_initial_s = 1.0\nrestart_max_s = 5.0\n"
    config = root / "config.toml"
    config.write_text(
        f"""[paths]
root = "{root / "data"}"

[models]
bundle = "{root / "bundle"}"
require_signature = false

[federation]
enabled = true
superlink = "{superlink}"
{tls}trusted_federation_keys = "{trusted_keys}"
{manifests}max_threads = 1

[federation.privacy]
mode = "example"
epsilon_budget = {budget}
delta = 1e-5
noise_multiplier = {noise_multiplier}
max_grad_norm = 1.0
"""
    )
    return NodeSpec(root, config, manifest, root / "replies.jsonl", tuple(markers))


@dataclass
class Procs:
    """Processes started by a test; all stopped (SIGTERM, then SIGKILL) at the end."""

    logs: Path
    running: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        out = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.running.append((name, proc))
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for _, proc in reversed(self.running):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for _, proc in self.running:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@contextmanager
def processes(logs: Path) -> Iterator[Procs]:
    logs.mkdir(parents=True, exist_ok=True)
    procs = Procs(logs)
    try:
        yield procs
    finally:
        procs.stop_all()


@dataclass(frozen=True)
class Coordinator:
    """The coordinator's side made with its own scripts, in `root`, for 127.0.0.1:`port`."""

    root: Path
    port: int
    env: dict[str, str]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.root / "tls" / "ca.crt"

    @classmethod
    def make(cls, root: Path, *, persistent: bool = False) -> Coordinator:
        """Test CA + server certificate (make_certs.py), flwr connection (connect.sh).

        `persistent`: the SuperLink keeps its state in a database file (what a coordinator
        runs, needed to restart it); else in memory. Flower 1.42's SQLite state gives up
        on a lock after 5 s (its fixed busy_timeout), which on two shared cores under
        three training nodes happened mid-run: only the restart test needs the file."""
        port = free_port()
        env = flower_env(root / "flwr-home")
        env.update(
            FAME_FED_HOST="127.0.0.1",
            FAME_FED_PORT=str(port),
            FAME_FED_TLS_DIR=str(root / "tls"),
            FAME_FED_DATABASE=str(root / "superlink.db") if persistent else ":flwr-in-memory:",
            FAME_FED_BIN=str(BIN),
            FAME_FED_CONNECTION="test",
        )
        env.pop("FAME_FED_ENV", None)
        (root / "flwr-home").mkdir(parents=True)
        script(env, "make_certs.py", "test-ca", str(root / "tls"), "--name", "127.0.0.1")
        script(env, "connect.sh")
        return cls(root, port, env)

    def node_key(self, name: str) -> Path:
        """A SuperNode key pair made as a hospital would (make_certs.py node-key)."""
        prefix = self.root / "node-keys" / name
        script(self.env, "make_certs.py", "node-key", str(prefix))
        return prefix

    def register(self, key: Path, name: str) -> int:
        """Register `key`.pub at the running SuperLink (register-node.sh); its node id."""
        out = script(self.env, "register-node.sh", f"{key}.pub", name).stdout
        return int(json.loads(out[out.index("{") :])["node-id"])


def script(env: dict[str, str], name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run one of the coordinator's scripts; its output on success, else an error."""
    path = COORDINATOR / name
    argv = [sys.executable, str(path), *args] if name.endswith(".py") else [str(path), *args]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{name} {args} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done


def start_superlink(procs: Procs, coordinator: Coordinator, name: str = "superlink") -> None:
    """superlink.sh: TLS, node authentication (and its database); returns once it listens."""
    procs.start(name, [str(COORDINATOR / "superlink.sh")], coordinator.env)
    wait_port(coordinator.port)


def supernode_argv(coordinator: Coordinator, key: Path, node_config: str) -> list[str]:
    """A SuperNode over TLS, authenticated with `key`, its own local port."""
    return [
        str(BIN / "flower-supernode"),
        "--superlink",
        coordinator.address,
        "--root-certificates",
        str(coordinator.ca),
        "--auth-supernode-private-key",
        str(key),
        "--port",
        str(free_port()),
        "--node-config",
        node_config,
    ]


def start_fame_node(procs: Procs, name: str, node: NodeSpec, env: dict[str, str]) -> None:
    """``fame-node --config CONFIG run``: the node's service, its supervisor with it."""
    node_env = {k: v for k, v in env.items() if not k.startswith("FAME_NODE_")}
    node_env.update(
        FAME_NODE_INGEST__RESCAN_INTERVAL_S="1.0",
        FAME_NODE_INGEST__SETTLE_S="0.2",
        FAME_NODE_PROCESSING__WORKERS="1",
    )
    argv = [sys.executable, "-m", "appliance.cli", "--config", str(node.config), "run"]
    procs.start(name, argv, node_env)


def run_app(
    coordinator: Coordinator, overrides: dict[str, object], timeout: float
) -> subprocess.CompletedProcess[str]:
    """run.sh with `overrides` (initial-bundle, signing-key, out-dir through its
    settings); returns when the run ended."""
    env = dict(coordinator.env)
    rest = dict(overrides)
    env["FAME_FED_BUNDLE"] = str(rest.pop("initial-bundle"))
    env["FAME_FED_SIGNING_KEY"] = str(rest.pop("signing-key"))
    env["FAME_FED_RUN_OUT"] = str(rest.pop("out-dir"))
    env["FAME_FED_OUT"] = str(Path(env["FAME_FED_RUN_OUT"]).parent)
    parts = []
    for key, value in rest.items():
        if isinstance(value, bool):
            parts.append(f"{key}={'true' if value else 'false'}")
        elif isinstance(value, str):
            parts.append(f'{key}="{value}"')
        else:
            parts.append(f"{key}={value}")
    argv = [str(COORDINATOR / "run.sh"), *parts]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
