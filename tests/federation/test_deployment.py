"""Two rounds of a real federation: one SuperLink and three SuperNodes as processes.

Marker ``federation``. Checks: the global weights changed; each node's recorded epsilon
is what Opacus's RDP accountant gives for the recorded (noise, sample rate, steps)
history; nothing a node sent names a file or patient or carries an image.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from appliance.config import load_config
from appliance.federation.ledger import PrivacyLedger
from tests.federation.harness import (
    BIN,
    PATIENT_MARKERS,
    flower_env,
    free_port,
    processes,
    run_app,
    wait_port,
    write_connection,
    write_node,
)

pytestmark = pytest.mark.federation


def test_two_rounds_of_fedavg_with_dp_sgd_insecure(
    tmp_path: Path, tiny_bundle: Path, federation_keys: tuple[Path, Path]
) -> None:
    signing_key, trusted = federation_keys
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = flower_env(tmp_path / "flwr-home")
    write_connection(tmp_path / "flwr-home", address, None)
    nodes = [
        write_node(
            tmp_path / f"node{i}",
            tiny_bundle,
            trusted,
            address,
            seed=10 + i,
            n_images=8 + 2 * i,
            markers=PATIENT_MARKERS[2 * i : 2 * i + 2],
        )
        for i in range(3)
    ]
    out = tmp_path / "coordinator"
    with processes(tmp_path / "logs") as procs:
        procs.start(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--disable-runtime-dependency-installation",
            ],
            env,
        )
        wait_port(port)
        for i, node in enumerate(nodes):
            procs.start(
                f"supernode{i}",
                [
                    str(BIN / "flower-supernode"),
                    "--insecure",
                    "--superlink",
                    address,
                    "--port",
                    str(free_port()),
                    "--node-config",
                    f'fame-config="{node.config}" reply-log="{node.reply_log}"',
                ],
                env,
            )
        started = time.monotonic()
        done = run_app(
            env,
            {
                "num-server-rounds": 2,
                "min-nodes": 3,
                "batch-size": 4,
                "learning-rate": 0.05,
                "initial-bundle": str(tiny_bundle),
                "signing-key": str(signing_key),
                "out-dir": str(out),
            },
            timeout=400,
        )
        elapsed = time.monotonic() - started
        logs = {name: procs.log(name) for name, _ in procs.running}
    assert (out / "round-2.json").is_file(), (done.stdout[-4000:], done.stderr[-2000:], logs)
    print(f"two rounds in {elapsed:.1f} s")
    first = np.load(out / "round-0.npz")
    last = np.load(out / "round-2.npz")
    assert any(not np.array_equal(first[k], last[k]) for k in first.files), (
        "the global weights did not change"
    )
    figures = json.loads((out / "round-2.json").read_text())["figures"]
    assert figures["nodes_trained"] == 3 and figures["failures"] == 0
    for node in nodes:
        config = load_config(node.config)
        with PrivacyLedger(config.database_path) as ledger:
            rounds = ledger.rounds()
            assert [r.server_round for r in rounds] == [1, 2]
            accountant = RDPAccountant()
            accountant.history = [(r.noise_multiplier, r.sample_rate, r.steps) for r in rounds]
            expected = accountant.get_epsilon(delta=1e-5)
            assert rounds[-1].epsilon == pytest.approx(expected, rel=1e-9)
            assert ledger.spent(1e-5) == pytest.approx(expected, rel=1e-9)
        _assert_replies_clean(node.reply_log, node.manifest.parent, node.markers)


def _assert_replies_clean(reply_log: Path, site: Path, markers: tuple[str, ...]) -> None:
    entries = [json.loads(line) for line in reply_log.read_text().splitlines()]
    assert entries, "the node sent nothing"
    text = reply_log.read_text()
    names = [p.stem for p in site.glob("*.png")]
    for needle in (*markers, *names, str(site)):
        assert needle not in text, f"a reply names {needle!r}"
    for entry in entries:
        for arrays in entry["arrays"].values():
            for a in arrays:
                assert a["dtype"] == "float32"
                assert a["shape"][-2:] != [32, 32], "an image-sized array was sent"
        for record in entry["metrics"].values():
            assert all(isinstance(v, int | float) for v in record.values())
