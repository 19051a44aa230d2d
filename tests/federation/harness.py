"""A real federation on 127.0.0.1 for the tests: SuperLink, SuperNodes, nodes and a run.

Everything is a separate process started from this venv's Flower 1.42 programs
(``flower-superlink``, ``flower-supernode``, ``flwr run``) with telemetry and update
checks off. Each node is a folder with its own ``config.toml`` (store, work folder,
federation section, a labelled manifest of its own images) and its own copy of the
starting bundle. File names of the nodes' images carry made-up patient names and ids
(`PATIENT_MARKERS`) so that a test can look for them in what a node sent.
"""

from __future__ import annotations

import csv
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
APP_DIR = Path(__file__).resolve().parents[2] / "trainer" / "federated" / "app"
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
) -> NodeSpec:
    root.mkdir(parents=True)
    shutil.copytree(bundle, root / "bundle")
    manifest = write_site(root / "site", seed, n_images, markers)
    tls = (
        f'root_certificates = "{root_certificates}"\n' if root_certificates else "insecure = true\n"
    )
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
manifests = ["{manifest}"]
max_threads = 1

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


def write_connection(home: Path, address: str, root_certificates: Path | None) -> None:
    home.mkdir(parents=True, exist_ok=True)
    tls = (
        f'root-certificates = "{root_certificates}"\n' if root_certificates else "insecure = true\n"
    )
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "{address}"\n{tls}'
    )


def run_app(
    env: dict[str, str], overrides: dict[str, object], timeout: float
) -> subprocess.CompletedProcess[str]:
    """``flwr run APP test --stream`` with `overrides`; returns when the run ended."""
    parts = []
    for key, value in overrides.items():
        if isinstance(value, bool):
            parts.append(f"{key}={'true' if value else 'false'}")
        elif isinstance(value, str):
            parts.append(f'{key}="{value}"')
        else:
            parts.append(f"{key}={value}")
    argv = [
        str(BIN / "flwr"),
        "run",
        str(APP_DIR),
        "test",
        "--stream",
        "--run-config",
        " ".join(parts),
    ]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
