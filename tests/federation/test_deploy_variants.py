"""A deployed global model gets the optimised variants: its FP16 ONNX (and TensorRT engines
where a GPU and TensorRT are present), listed in its signed manifest.

Real tiny bundle, real store, real signed global model kept by the ClientApp's own
`Node.keep_global`, real export and registry (`appliance.federation.deploy`); the FP16
graph is run in ONNX Runtime against the FP32 one within 5e-2 (max abs difference), the
tolerance of the FP16 contract tests (`tests/exporters/test_fp16.py`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from appliance.bundle import load_bundle
from appliance.federation.deploy import deploy_pending
from appliance.models.node_key import own_trusted_key
from appliance.models.registry import ModelRegistry
from appliance.models.signing import load_private_key
from appliance.runtime.variants import FP16_FILE
from exporters.tensorrt import EngineBuildError, machine_key
from tests.federation.harness import write_node
from trainer.federated.node import Node
from trainer.federated.signing import sign_global, trusted_keys_in
from trainer.federated.wire import arrays_digest, state_arrays

FP16_TOLERANCE = 5e-2  # tests/exporters/test_fp16.py: Fp16Contract.test_close_to_fp32


def _gpu_and_tensorrt() -> bool:
    try:
        machine_key("0" * 64, "fp16", 1)
    except EngineBuildError:
        return False
    return True


@pytest.fixture
def node(tmp_path: Path, tiny_bundle: Path, federation_keys: tuple[Path, Path]) -> Node:
    _, trusted = federation_keys
    spec = write_node(
        tmp_path / "node", tiny_bundle, trusted, "127.0.0.1:9", seed=5, n_images=30,
        markers=("DOE^JANE", "PID483920"),
    )  # fmt: skip
    return Node.open(spec.config)


def test_the_deployed_bundle_has_its_fp16_onnx_close_to_fp32(
    node: Node, federation_keys: tuple[Path, Path]
) -> None:
    key, _ = federation_keys
    net = node.running_net()
    with torch.no_grad():  # the federation moved the weights a little
        for p in net.parameters():
            p.add_(1e-4 * torch.randn_like(p))
    arrays = state_arrays(net)
    digest = arrays_digest(arrays)
    signer = trusted_keys_in(node.config.federation.trusted_federation_keys)[0]  # type: ignore[arg-type]
    signature = sign_global(load_private_key(key), 91, 1, digest)
    node.keep_global(net, 91, 1, digest, signer, signature, {"strategy": "fedavg", "nodes": 2})
    [decision] = deploy_pending(node.config)
    assert decision.decision == "deployed", decision.reason
    with ModelRegistry(node.config) as registry:
        assert registry.active_label() == decision.model
        bundle = load_bundle(
            registry.active().path,
            trusted_keys=[own_trusted_key(node.config)],  # type: ignore[list-item]
            require_signature=True,
        )
    # Listed in the signed manifest with its checksum (load_bundle verified the bytes).
    assert FP16_FILE in bundle.manifest.files
    variants = bundle.manifest.evaluation["variants"]
    assert variants["fp16"] == FP16_FILE
    assert set(bundle.manifest.evaluation["onnx_fp16"]["max_abs_diff_vs_fp32"])
    # It runs in ONNX Runtime and computes what the FP32 graph computes.
    fp32 = ort.InferenceSession(bundle.model_bytes, providers=["CPUExecutionProvider"])
    half = ort.InferenceSession(bundle.contents[FP16_FILE], providers=["CPUExecutionProvider"])
    size = bundle.manifest.preprocess_params().size
    x = np.random.default_rng(1).standard_normal((2, 1, size, size)).astype(np.float32)
    name = fp32.get_inputs()[0].name
    want, got = fp32.run(None, {name: x}), half.run(None, {name: x})
    assert len(want) == len(got) >= 2
    for a, b in zip(want, got, strict=True):
        assert b.dtype == np.float32 and a.shape == b.shape
        assert float(np.max(np.abs(a - b))) < FP16_TOLERANCE
    # TensorRT engines: built and listed where this machine can, else skipped with why.
    engines = [f for f in bundle.manifest.files if f.startswith("engines/")]
    if _gpu_and_tensorrt():
        assert engines and variants["engines"] == [e.split("/", 1)[1] for e in engines]
    else:
        assert engines == [] and variants["engines"] == []
        assert "TensorRT" in variants["engines_not_built"] or "GPU" in variants["engines_not_built"]
