"""p95 inference latency while the node trains a federated round, against an idle node.

``python -m bench.federation_latency [--rate 2] [--seconds 60] [--out FILE]``
(default ``docs/federation/latency.json``)

One real ``fame-node run`` (the shipped default bundle, its supervised SuperNode at the
configured niceness and thread cap, ``federation.max_threads = 1``, niceness 10) against a
real SuperLink on 127.0.0.1 (TLS, node authentication: the coordinator's own scripts, as
in ``tests/federation``). Files are dropped into the node's inbox at a steady rate twice:

1. **idle**: the SuperNode connected, no run;
2. **during a round**: from the moment the node receives its training instruction of a
   one-node run (DP-SGD, Opacus, on its local labelled cases: ``--cases`` synthetic
   lesion images of 128 px, ``--local-epochs``), for the same time.

Per-file latency is the node's own record: ``jobs.created_at`` (the file taken into the
durable queue) to ``jobs.finished_at`` (its results committed), from its store; the drop
to ``finished_at`` is given too. The inputs are distinct ultrasound phantoms
(`appliance.phantom`), so no drop is a duplicate of another. The JSON says how long the
round's training overlapped the drops (the round ends when the node's privacy ledger
records it). The machine is shared: its load average is recorded at both phases.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import DEFAULT_BUNDLE, REPO_ROOT, machine, phantom_pngs, read_jobs

OUT = REPO_ROOT / "docs" / "federation" / "latency.json"


def _wait(what: str, check: Any, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what}: not within {timeout} s")


def _drop(files: list[Path], inbox: Path, prefix: str, rate: float) -> dict[str, float]:
    """Copy `files` into the inbox at `rate` per second; the wall time of each drop."""
    dropped: dict[str, float] = {}
    start = time.monotonic()
    for i, src in enumerate(files):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        name = f"{prefix}-{i:04d}.png"
        tmp = inbox.parent / f".{name}"
        shutil.copyfile(src, tmp)
        os.replace(tmp, inbox / name)  # appears complete: no half-written file
        dropped[name] = time.time()
    return dropped


def _phase(db: Path, dropped: dict[str, float], timeout: float) -> dict[str, Any]:
    """Wait until every dropped file is done; latencies from the node's store (ms)."""

    def rows() -> list[dict[str, Any]]:
        return [j for j in read_jobs(db) if Path(j["path"]).name in dropped]

    _wait(
        "every dropped file processed",
        lambda: len(r := rows()) == len(dropped) and all(j["finished_at"] for j in r),
        timeout,
    )
    queued: list[float] = []
    end_to_end: list[float] = []
    statuses: dict[str, int] = {}
    for j in rows():
        done = datetime.fromisoformat(j["finished_at"])
        queued.append((done - datetime.fromisoformat(j["created_at"])).total_seconds() * 1e3)
        end_to_end.append((done.timestamp() - dropped[Path(j["path"]).name]) * 1e3)
        statuses[j["status"]] = statuses.get(j["status"], 0) + 1
    q, e = np.asarray(queued), np.asarray(end_to_end)
    return {
        "files": len(queued),
        "done": statuses.get("done", 0),
        "p50_ms": round(float(np.percentile(q, 50)), 1),
        "p95_ms": round(float(np.percentile(q, 95)), 1),
        "max_ms": round(float(q.max()), 1),
        "drop_to_done_p50_ms": round(float(np.percentile(e, 50)), 1),
        "drop_to_done_p95_ms": round(float(np.percentile(e, 95)), 1),
        "loadavg_1min": round(os.getloadavg()[0], 2),
    }


def run(
    rate: float, seconds: float, cases: int, local_epochs: int, scratch: Path
) -> dict[str, Any]:
    from appliance.config import load_config
    from appliance.federation.ledger import PrivacyLedger
    from appliance.federation.supervisor import read_supernode_status
    from appliance.models.signing import generate_keypair
    from tests.federation.harness import (
        COORDINATOR,
        Coordinator,
        free_port,
        processes,
        start_fame_node,
        start_superlink,
        write_node,
        write_site,
    )

    n = int(rate * seconds)
    inputs = phantom_pngs(scratch / "inputs", 2 * n + 1)  # the last one warms the node up
    private, public = generate_keypair(scratch / "keys" / "federation")
    trusted = scratch / "trusted"
    trusted.mkdir()
    (trusted / "federation.pub").write_bytes(public.read_bytes())
    coordinator = Coordinator.make(scratch / "coordinator")
    key = coordinator.node_key("hospital0")
    node = write_node(
        scratch / "node",
        DEFAULT_BUNDLE,
        trusted,
        coordinator.address,
        seed=7,
        n_images=0,
        markers=("X",),
        root_certificates=coordinator.ca,
        private_key=key,
        supernode_port=free_port(),
        budget=1e6,
    )
    manifest = write_site(scratch / "site", 7, cases, ("PATIENT",), size=128)
    text = node.config.read_text().replace(
        "max_threads = 1", f'manifests = ["{manifest}"]\nmax_threads = 1'
    )
    node.config.write_text(text)
    config = load_config(node.config)
    db, inbox = config.database_path, config.folder("inbox")
    with processes(scratch / "logs") as procs:
        start_superlink(procs, coordinator)
        coordinator.register(key, "hospital0")
        start_fame_node(procs, "node", node, coordinator.env)
        _wait(
            "the SuperNode connected",
            lambda: bool((read_supernode_status(config) or {}).get("connected")),
            180,
        )
        inbox.mkdir(parents=True, exist_ok=True)
        _phase(db, _drop(inputs[2 * n :], inbox, "warmup", rate), 300)  # the model loaded
        idle = _phase(db, _drop(inputs[:n], inbox, "idle", rate), 600)

        env = dict(coordinator.env)
        env.update(
            FAME_FED_BUNDLE=str(DEFAULT_BUNDLE),
            FAME_FED_SIGNING_KEY=str(private),
            FAME_FED_RUN_OUT=str(scratch / "run"),
            FAME_FED_OUT=str(scratch),
        )
        overrides = [
            "num-server-rounds=1",
            "min-nodes=1",
            "batch-size=4",
            f"local-epochs={local_epochs}",
            "round-timeout-s=1800.0",
        ]
        run_proc = procs.start("run", [str(COORDINATOR / "run.sh"), *overrides], env)
        _wait("the training instruction", lambda: "Receiving: train" in procs.log("node"), 300)
        began = time.time()
        dropped = _drop(inputs[n : 2 * n], inbox, "round", rate)
        with PrivacyLedger(db) as ledger:

            def recorded() -> bool:
                if ledger.rounds():
                    return True
                if "received 0 results" in procs.log("run") or run_proc.poll() is not None:
                    raise RuntimeError(
                        "the node did not train the round (its ClientApp failed or declined: "
                        f"see its log): {procs.log('node')[-3000:]}"
                    )
                return False

            _wait("the round recorded", recorded, 1800)
            trained_until = ledger.rounds()[-1].at.timestamp()
        during = _phase(db, dropped, 600)
        run_proc.wait(timeout=600)
    last_drop = max(dropped.values())
    during["training_overlap_s"] = round(min(trained_until, last_drop) - began, 1)
    during["drops_while_training"] = sum(t <= trained_until for t in dropped.values())
    return {"idle": idle, "during_round": during}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.federation_latency")
    parser.add_argument("--rate", type=float, default=2.0, help="files per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="drop this long per phase")
    parser.add_argument("--cases", type=int, default=64, help="local labelled cases")
    parser.add_argument("--local-epochs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    started = datetime.now().astimezone().isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(prefix="fame-fedlat-") as tmp:
        phases = run(args.rate, args.seconds, args.cases, args.local_epochs, Path(tmp))
    idle, during = phases["idle"], phases["during_round"]
    record = {
        "kind": "inference_latency_during_round",
        "what": (
            "per-file latency of the node's inference (jobs.created_at -> finished_at from "
            "its store, ms) for files dropped into its inbox at a steady rate, while the "
            "node is idle and while it trains a federated round (DP-SGD, at its "
            "niceness and thread cap)"
        ),
        "started": started,
        "settings": {
            "rate_per_s": args.rate,
            "seconds_per_phase": args.seconds,
            "local_cases": args.cases,
            "local_epochs": args.local_epochs,
            "bundle": "models/default",
            "federation.max_threads": 1,
            "federation.niceness": 10,
            "inputs": "ultrasound phantoms (appliance.phantom), distinct per drop",
        },
        "idle": idle,
        "during_round": during,
        "ratio_p95": round(during["p95_ms"] / idle["p95_ms"], 3),
        "machine": _machine_line(),
        "command": "python -m bench.federation_latency " + " ".join(argv or sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(record, indent=2))
    return 0


def _machine_line() -> str:
    m = machine()
    load = ", ".join(f"{x:.1f}" for x in m["loadavg_at_start"])
    return f"{m['cpu']}, {m['cpus_usable']} usable cores, load average at start {load} (shared)"


if __name__ == "__main__":
    raise SystemExit(main())
