"""Client-level DP in a real federation (marker ``federation``): two SuperNodes in
``federation.privacy.mode = "client"`` over TLS with node authentication, one round.

The run asks for noise multiplier 2 on updates clipped to 0.5. Node 0 (requires 1) trains
without DP-SGD, clips, and records (2, 1, 1) in its ledger, its epsilon what Opacus's RDP
accountant gives; node 1 (requires 3) declines, saying why in its own log. The global
model the coordinator signs and sends carries the noise: its change has the standard
deviation z * C / m = 1 that Flower's ``compute_stdv`` gives (the clipped update itself,
L2 norm <= 0.5 over 100 k values, moves it by far less).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from appliance.config import load_config
from appliance.federation.ledger import PrivacyLedger
from tests.federation.harness import (
    PATIENT_MARKERS,
    Coordinator,
    processes,
    run_app,
    start_superlink,
    supernode_argv,
    write_node,
)

pytestmark = pytest.mark.federation


def test_client_level_dp_round(
    tmp_path: Path, tiny_bundle: Path, federation_keys: tuple[Path, Path]
) -> None:
    signing_key, trusted = federation_keys
    coordinator = Coordinator.make(tmp_path / "coordinator-side")
    keys = [coordinator.node_key(f"hospital{i}") for i in range(2)]
    nodes = []
    for i, required in enumerate((1.0, 3.0)):
        node = write_node(
            tmp_path / f"node{i}",
            tiny_bundle,
            trusted,
            coordinator.address,
            seed=40 + i,
            n_images=8,
            markers=PATIENT_MARKERS[2 * i : 2 * i + 2],
            noise_multiplier=required,
            root_certificates=coordinator.ca,
            private_key=keys[i],
        )
        text = node.config.read_text().replace('mode = "example"', 'mode = "client"')
        node.config.write_text(text)
        nodes.append(node)
    out = tmp_path / "run"
    with processes(tmp_path / "logs") as procs:
        start_superlink(procs, coordinator)
        for i, node in enumerate(nodes):
            coordinator.register(keys[i], f"hospital{i}")
            procs.start(
                f"supernode{i}",
                supernode_argv(
                    coordinator,
                    keys[i],
                    f'fame-config="{node.config}" reply-log="{node.reply_log}"',
                ),
                coordinator.env,
            )
        done = run_app(
            coordinator,
            {
                "num-server-rounds": 1,
                "min-nodes": 2,
                "batch-size": 4,
                "client-dp-noise-multiplier": 2.0,
                "client-dp-clipping-norm": 0.5,
                "initial-bundle": str(tiny_bundle),
                "signing-key": str(signing_key),
                "out-dir": str(out),
            },
            timeout=300,
        )
        assert (out / "round-1.json").is_file(), (done.stdout[-3000:], procs.log("supernode0"))
        assert "below the 3 this node requires" in procs.log("supernode1")
    figures = json.loads((out / "round-1.json").read_text())["figures"]
    assert (figures["nodes_trained"], figures["nodes_declined"]) == (1, 1), figures
    assert figures["client_dp_stddev"] == pytest.approx(1.0)
    first, last = np.load(out / "round-0.npz"), np.load(out / "round-1.npz")
    change = np.concatenate([(last[k] - first[k]).ravel() for k in first.files])
    assert change.size > 50_000
    assert change.std() == pytest.approx(1.0, rel=0.03)
    with PrivacyLedger(load_config(nodes[0].config).database_path) as ledger:
        (record,) = ledger.rounds()
        assert (record.mode, record.noise_multiplier, record.sample_rate, record.steps) == (
            "client",
            2.0,
            1.0,
            1,
        )
        accountant = RDPAccountant()
        accountant.history = [(2.0, 1.0, 1)]
        assert record.epsilon == pytest.approx(accountant.get_epsilon(delta=1e-5), rel=1e-9)
    with PrivacyLedger(load_config(nodes[1].config).database_path) as ledger:
        assert ledger.rounds() == []
    sent = [json.loads(line) for line in nodes[0].reply_log.read_text().splitlines()]
    (train,) = [r for r in sent if r["kind"] == "train"]
    assert train["metrics"]["fitres.num_examples"]["num_examples"] == 1  # equal weights
