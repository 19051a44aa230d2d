"""Deploying a received global model: real tiny bundle, real store, real signed files
(written by the ClientApp's own `Node.keep_global` and `sign_global`), real export, real
registry and a running `appliance.service.Node` that swaps the new model in live."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from appliance.bundle import load_bundle
from appliance.federation.deploy import deploy_pending
from appliance.federation.received import ReceivedModelStore
from appliance.models.node_key import own_trusted_key
from appliance.models.registry import ModelRegistry
from appliance.models.signing import load_private_key
from appliance.service import Node as Service
from appliance.store.audit import AuditLog
from tests.federation.harness import write_node
from trainer.federated.node import Node
from trainer.federated.signing import sign_global, trusted_keys_in
from trainer.federated.wire import arrays_digest, state_arrays
from trainer.models import FameNodeNet
from trainer.weights import load_bundle_net

MARKERS = ("DOE^JANE", "PID483920")


@pytest.fixture
def node(tmp_path: Path, tiny_bundle: Path, federation_keys: tuple[Path, Path]) -> Node:
    _, trusted = federation_keys
    spec = write_node(
        tmp_path / "node",
        tiny_bundle,
        trusted,
        "127.0.0.1:9",
        seed=3,
        n_images=30,
        markers=MARKERS,
    )
    return Node.open(spec.config)


def _keep(node: Node, net: FameNodeNet, key_path: Path, run_id: int, label: int) -> Path:
    """What the ClientApp's evaluate does with a verified final global model."""
    arrays = state_arrays(net)
    digest = arrays_digest(arrays)
    signature = sign_global(load_private_key(key_path), run_id, label, digest)
    signer = trusted_keys_in(node.config.federation.trusted_federation_keys)[0]  # type: ignore[arg-type]
    about = {"strategy": "fedavg", "secagg": True, "model_group": "", "nodes": 3}
    return node.keep_global(net, run_id, label, digest, signer, signature, about)


def _blind(node: Node) -> FameNodeNet:
    """The running model with a segmenter that never finds a lesion (held-out Dice 0)."""
    net = node.running_net()
    with torch.no_grad():
        last = [m for m in net.segmenter.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        assert last.bias is not None
        last.weight.zero_()
        last.bias.fill_(-30.0)
    return net


def test_a_not_worse_global_model_is_exported_signed_and_swapped_in_live(
    node: Node, federation_keys: tuple[Path, Path]
) -> None:
    key, _ = federation_keys
    config = node.config.model_copy(
        update={"models": node.config.models.model_copy(update={"poll_interval_s": 60.0})}
    )
    service = Service(config)
    service.start(watch=False)
    try:
        running = service.parts.bundle.version_label
        net = node.running_net()
        with torch.no_grad():  # the federation moved the weights a little
            for p in net.parameters():
                p.add_(1e-4 * torch.randn_like(p))
        _keep(node, net, key, run_id=77, label=2)
        [decision] = deploy_pending(node.config)
        assert decision.decision == "deployed", decision.reason
        label = decision.model
        assert label == running.split("@")[0] + "@" + running.split("@")[1] + "+fl.77.2"
        assert service.check_model() is True  # the running service swaps it in
        assert service.parts.bundle.version_label == label
    finally:
        service.stop()
    with ModelRegistry(node.config) as registry:
        assert registry.active_label() == label
        history = [(e.action, e.model, e.actor) for e in registry.history(2)]
        assert history == [("activated", label, "federation"), ("installed", label, "federation")]
        bundle = load_bundle(
            registry.active().path,
            trusted_keys=[own_trusted_key(node.config)],  # type: ignore[list-item]
            require_signature=True,
        )
    fed = bundle.manifest.training["federation"]
    assert (fed["run"], fed["round"], fed["nodes"], fed["strategy"]) == ("77", 2, 3, "fedavg")
    assert fed["aggregated_weights_sha256"] == arrays_digest(state_arrays(net))
    assert bundle.manifest.training["dp"]["mode"] == "example"
    assert bundle.manifest.training["dp"]["delta"] == 1e-5
    figures = bundle.manifest.evaluation["federation_heldout"]
    assert figures["global"]["n"] == figures["running"]["n"] > 0
    # The phantom check ran on both models before the swap; its counts are in the decision.
    phantoms = decision.figures["phantoms"]
    assert phantoms["running"]["n"] == phantoms["global"]["n"] == 24
    assert phantoms["global"]["flagged"] >= phantoms["running"]["flagged"]
    assert figures["running_model"] == running
    # The exported weights are the global model's, and the graph runs them.
    again = load_bundle_net(bundle)
    for a, b in zip(state_arrays(again), state_arrays(net), strict=True):
        np.testing.assert_array_equal(a, b)
    # Decided once: a second pass decides nothing again; the audit log holds the events.
    assert deploy_pending(node.config) == []
    with AuditLog(node.config.database_path) as audit:
        entries = audit.read(action="model_activated", limit=50)
        assert [(e.actor, e.subject) for e in entries][-1] == ("federation", f"model:{label}")
        assert audit.verify().ok


def test_a_worse_global_model_is_refused_with_its_figures(
    node: Node, federation_keys: tuple[Path, Path]
) -> None:
    key, _ = federation_keys
    before = ModelRegistry(node.config).active_label()
    _keep(node, _blind(node), key, run_id=78, label=3)
    [decision] = deploy_pending(node.config)
    assert decision.decision == "refused"
    assert "below the running" in decision.reason and "deploy_margin" in decision.reason
    assert decision.figures["global"]["dice"] == 0.0
    assert decision.figures["running"]["score"] > decision.figures["global"]["score"]
    with ModelRegistry(node.config) as registry:
        assert registry.active_label() == before
        newest = registry.history(1)[0]
        assert (newest.action, newest.actor, newest.model) == (
            "refused",
            "federation",
            decision.model,
        )
        assert newest.reason == decision.reason
    assert not (node.config.folder("models") / str(decision.model)).exists()


def test_a_bad_signature_or_other_shapes_are_refused_and_never_exported(
    node: Node, federation_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    key, _ = federation_keys
    path = _keep(node, node.running_net(), key, run_id=79, label=1)
    record = json.loads(path.with_suffix(".json").read_text())
    record["digest"] = "0" * 64  # signed for another model
    path.with_suffix(".json").write_text(json.dumps(record))
    # Another architecture under run 80 (the node's keep_global writes whatever it is given).
    from trainer.models import LesionClassifier, MAUNet

    other = FameNodeNet(MAUNet(base_width=8), LesionClassifier(widths=(4, 8)))
    _keep(node, other, key, run_id=80, label=1)
    decisions = {d.run_id: d for d in deploy_pending(node.config)}
    assert decisions["79"].decision == "refused" and "signed" in decisions["79"].reason
    assert decisions["80"].decision == "refused" and "shape" in decisions["80"].reason
    exports = node.config.folder("work") / "federation" / "exports"
    assert not exports.exists() or not any(exports.iterdir())
    with ReceivedModelStore(node.config.database_path) as store:
        assert {d.decision for d in store.decisions()} == {"refused"}


def _phantom_cases(node: Node) -> None:
    """Turn the node's local cases into ultrasound phantoms (other seeds than the check's,
    the same echogenicities and posteriors): the OOD head a re-export fits on these learns
    that a phantom is in distribution."""
    import csv

    from PIL import Image

    from appliance.phantom import PhantomSpec, make_phantom

    manifest = node.config.federation.manifests[0]
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for i, row in enumerate(rows):
        spec = PhantomSpec(
            lesion="none" if row["label"] == "normal" else "ellipse",
            echogenicity=(0.0, 0.25, 1.5)[i % 3],
            posterior=("none", "shadow")[i % 2],
            seed=100 + i,
        )
        phantom = make_phantom(spec)
        Image.fromarray(phantom.image).save(manifest.parent / row["image"])
        Image.fromarray(phantom.mask * 255).save(manifest.parent / row["masks"])


def test_a_global_model_whose_ood_flag_lets_phantoms_through_is_refused(
    node: Node, federation_keys: tuple[Path, Path]
) -> None:
    # The export refits the OOD head on the node's local cases; where those look like the
    # phantoms, the re-exported model would diagnose phantoms the running model flags.
    key, _ = federation_keys
    _phantom_cases(node)
    before = ModelRegistry(node.config).active_label()
    net = node.running_net()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1e-4 * torch.randn_like(p))
    _keep(node, net, key, run_id=81, label=1)
    [decision] = deploy_pending(node.config)
    phantoms = decision.figures.get("phantoms", {})
    assert phantoms, f"the check did not run: {decision.decision}, {decision.reason}"
    assert phantoms["running"]["flagged"] > 0, "the running model must flag some phantoms"
    assert decision.decision == "refused", decision.reason
    assert "ultrasound phantoms" in decision.reason and before in decision.reason
    assert phantoms["global"]["flagged"] < phantoms["running"]["flagged"]
    with ModelRegistry(node.config) as registry:
        assert registry.active_label() == before
        newest = registry.history(1)[0]
        assert (newest.action, newest.model) == ("refused", decision.model)
    # The refused export, signed with the node's own key, is not left behind.
    exports = node.config.folder("work") / "federation" / "exports"
    assert not (exports / str(decision.model)).exists()
