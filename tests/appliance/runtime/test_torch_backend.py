"""The torch backend rebuilds the graph of a bundle's model.onnx from its safetensors files
(weights.safetensors + heads.safetensors) for every model family, and computes what ONNX
Runtime computes: every output, and so the Analyzer's flags; a bundle whose files are
missing, tampered with or another bundle's is refused before anything runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from appliance.analysis import Analyzer
from appliance.bundle import MANIFEST_NAME, Bundle, load_bundle, sha256_bytes
from appliance.config import RuntimeConfig, ThresholdsConfig
from appliance.errors import BackendError, BundleError
from appliance.runtime.factory import create_backend, select_backend
from appliance.runtime.torch_backend import (
    TorchBackend,
    in_precision,
    load_torch_model,
    padded_batch,
)
from appliance.runtime.variants import HEADS_FILE, WEIGHTS_FILE
from tests.exporters.families import TINY_DUAL_STAGE
from tests.trainer.foldbundle import export_tiny, tiny_fold_net, tiny_single_net
from trainer.graph import HeadsError, heads_bytes, heads_from_bytes
from trainer.models import DualStageClassifier, FameNodeNet, MAUNet
from trainer.ood import LayeredOODStats, OODStats

OUTPUTS = ("lesion_prob", "class_prob", "ood_score", "seg_uncertainty")


def _dual_stage_net(seed: int = 0) -> FameNodeNet:
    torch.manual_seed(seed)
    return FameNodeNet(MAUNet(base_width=4), DualStageClassifier(TINY_DUAL_STAGE)).eval()


FAMILIES = {"single": tiny_single_net, "folds": tiny_fold_net, "dual-stage": _dual_stage_net}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One real export (`export_fame_bundle`) per family, and a second single-MAU-Net one."""
    root = tmp_path_factory.mktemp("torchgraph")
    out = {
        name: export_tiny(make(), root / name, name=f"tiny-{name}")
        for name, make in FAMILIES.items()
    }
    out["other"] = export_tiny(tiny_single_net(seed=1), root / "other", name="tiny-other")
    return out


def _frames(n: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, 1, size, size)).astype(np.float32)


def _images() -> list[np.ndarray]:
    """Frames as the node reads them (uint8, other sizes than the network's input)."""
    rng = np.random.default_rng(5)
    out = [rng.integers(0, 256, (40 + 4 * i, 48), dtype=np.uint8) for i in range(6)]
    out.append((np.indices((48, 64)).sum(axis=0) % 2 * 255).astype(np.uint8))
    disc = np.full((40, 40), 40, np.uint8)
    disc[10:25, 12:30] = 200
    out.append(disc)
    return out


def _cpu(bundle: Bundle, max_batch: int = 4) -> TorchBackend:
    return TorchBackend(bundle, device="cpu", precision="fp32", compile=False, max_batch=max_batch)


def _between(scores: list[float]) -> float:
    """A threshold in the widest gap between the scores: some frames flagged, some not, and
    no score within rounding of it."""
    s = sorted(scores)
    gap, k = max((s[i + 1] - s[i], i) for i in range(len(s) - 1))
    assert gap > 1e-3, s  # far wider than the 1e-4 the backends may differ by
    return (s[k] + s[k + 1]) / 2


@pytest.mark.parametrize("family", list(FAMILIES))
def test_cpu_fp32_equals_onnxruntime_and_so_do_the_flags(
    bundles: dict[str, Path], family: str
) -> None:
    bundle = load_bundle(bundles[family])
    names = [o.name for o in bundle.manifest.outputs]
    assert names == list(OUTPUTS[: 4 if family == "folds" else 3])
    torch_backend = _cpu(bundle)
    assert torch_backend.output_names == tuple(names)
    onnx_backend = create_backend(bundle, RuntimeConfig(backend="onnxruntime-cpu"), workers=1)
    x = _frames(6)  # more than max_batch: run in chunks
    got, want = torch_backend.infer(x), onnx_backend.infer(x)
    for name in OUTPUTS:
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None) == (b is None) == (name not in names), name
        if b is not None:
            assert a.shape == b.shape and a.dtype == np.float32
            np.testing.assert_allclose(a, b, atol=1e-4, err_msg=name)
    assert torch_backend.device.startswith(f"torch {torch.__version__} FP32 eager on CPU")

    # The node's flags (temperature-scaled confidence, OOD, uncertainty) from each backend.
    on_torch = Analyzer(bundle, torch_backend, ThresholdsConfig())
    on_onnx = Analyzer(bundle, onnx_backend, ThresholdsConfig())
    reference = on_onnx.analyse(_images(), None)
    # Thresholds between the scores, so that some frames are flagged and some are not.
    for analyzer in (on_torch, on_onnx):
        analyzer.ood_threshold = _between([r.ood_score or 0.0 for r in reference])
        if family == "folds":
            analyzer.uncertainty_threshold = _between([r.seg_uncertainty or 0.0 for r in reference])
    a, b = on_torch.analyse(_images(), None), on_onnx.analyse(_images(), None)
    flags = [r.diagnosis.flags for r in b]
    assert [r.diagnosis.flags for r in a] == flags
    assert [r.diagnosis.label for r in a] == [r.diagnosis.label for r in b]
    assert any("out_of_distribution" in f for f in flags)
    assert not all("out_of_distribution" in f for f in flags)
    if family == "folds":
        assert any("high_uncertainty" in f for f in flags)
    for name in ("ood_score", "seg_uncertainty"):
        got_scores = [getattr(r, name) for r in a]
        if name in names:
            # Within 1e-4, relative beyond 1 as the export's parity check: an OOD score of
            # 279 differs by 6e-4 (2e-6 relative) between the two on an AVX-512 CPU.
            want_scores = np.asarray([getattr(r, name) for r in b])
            gap = np.abs(np.asarray(got_scores) - want_scores) / np.maximum(1.0, want_scores)
            assert gap.max() <= 1e-4, (name, got_scores, want_scores)
        else:
            assert got_scores == [None] * len(a)
    # The confidence behind low_confidence: temperature-scaled on both.
    np.testing.assert_allclose(
        [r.diagnosis.confidence for r in a], [r.diagnosis.confidence for r in b], atol=1e-4
    )


def test_fp16_needs_cuda(bundles: dict[str, Path]) -> None:
    with pytest.raises(BackendError, match="CUDA"):
        TorchBackend(load_bundle(bundles["single"]), device="cpu", precision="fp16")


def test_under_fp16_the_ood_head_stays_float32(bundles: dict[str, Path]) -> None:
    # The backend's FP16 set-up, on the CPU's FP16 kernels (CUDA's are tested under `gpu`).
    bundle = load_bundle(bundles["folds"])
    fp32 = load_torch_model(bundle)
    half = in_precision(load_torch_model(bundle), torch.float16)
    assert {p.dtype for p in half.net.parameters()} == {torch.float16}
    for (name, a), b in zip(half.ood_head.named_buffers(), fp32.ood_head.buffers(), strict=True):
        assert a.dtype == torch.float32 and torch.equal(a, b), name  # never rounded
    x = _frames(3)
    with torch.inference_mode():
        got = half(torch.from_numpy(x).half())
    want = create_backend(bundle, RuntimeConfig(backend="onnxruntime-cpu"), workers=1).infer(x)
    assert want.ood_score is not None
    assert got[2].dtype == torch.float32 and torch.isfinite(got[2]).all()
    np.testing.assert_allclose(got[2].numpy(), want.ood_score, rtol=5e-2, atol=1e-2)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rewrite(bundle_dir: Path, files: dict[str, bytes | None]) -> None:
    """Replace (bytes) or remove (None) bundle files and record them in the manifest, as an
    export would: the bundle still verifies."""
    manifest = json.loads((bundle_dir / MANIFEST_NAME).read_text())
    for rel, data in files.items():
        if data is None:
            (bundle_dir / rel).unlink()
            del manifest["files"][rel]
        else:
            (bundle_dir / rel).write_bytes(data)
            manifest["files"][rel] = sha256_bytes(data)
    (bundle_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))


def test_a_bundle_without_heads_is_refused_with_what_to_do(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    old = _copy(bundles["single"], tmp_path / "old")
    _rewrite(old, {HEADS_FILE: None})
    bundle = load_bundle(old)  # a valid bundle: ONNX Runtime runs it
    with pytest.raises(HeadsError, match=r"carries no heads\.safetensors.*trainer\.refit_heads"):
        _cpu(bundle)
    # The factory says so before it imports torch or looks for a GPU.
    with pytest.raises(BackendError, match=r"has no heads\.safetensors.*trainer\.refit_heads"):
        select_backend(bundle, RuntimeConfig(backend="torch-cuda"))
    _rewrite(old, {WEIGHTS_FILE: None})
    with pytest.raises(
        BackendError, match=r"no weights\.safetensors or heads\.safetensors.*exported again"
    ):
        select_backend(load_bundle(old), RuntimeConfig(backend="torch-cuda"))


def test_tampered_heads_are_refused_by_verification(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    copy = _copy(bundles["single"], tmp_path / "tampered")
    data = bytearray((copy / HEADS_FILE).read_bytes())
    data[-1] ^= 0x01  # one bit of the last tensor
    (copy / HEADS_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"checksum mismatch for heads\.safetensors"):
        load_bundle(copy)


def test_another_bundles_heads_are_refused(bundles: dict[str, Path], tmp_path: Path) -> None:
    # The same architecture, so every shape fits: the weights' sha256 tells them apart.
    copy = _copy(bundles["single"], tmp_path / "swapped")
    _rewrite(copy, {HEADS_FILE: (bundles["other"] / HEADS_FILE).read_bytes()})
    with pytest.raises(HeadsError, match=r"fitted to the weights of sha256.*another model"):
        _cpu(load_bundle(copy))


def test_heads_that_do_not_fit_the_network_are_refused_even_bound_to_these_weights(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    # Heads fitted to another network, rebound to these weights' sha256: one scored layer
    # (the first encoder level) of another width than this network gives.
    copy = _copy(bundles["single"], tmp_path / "forged")
    own = heads_from_bytes((copy / HEADS_FILE).read_bytes())
    assert isinstance(own.stats, LayeredOODStats) and own.layers[0] == "encoder1"
    layers = list(own.stats.layers)
    k, d = layers[0].means.shape
    layers[0] = OODStats(means=np.zeros((k, d + 2)), precision=np.eye(d + 2))
    other = LayeredOODStats(layers=tuple(layers), scales=own.stats.scales, names=own.layers)
    sha = sha256_bytes((copy / WEIGHTS_FILE).read_bytes())
    _rewrite(copy, {HEADS_FILE: heads_bytes(other, own.temperature, weights_sha256=sha)})
    with pytest.raises(HeadsError, match=rf"layer encoder1 scores {d + 2} features.*gives {d}"):
        _cpu(load_bundle(copy))


def test_a_model_onnx_with_an_ood_score_is_never_run_without_one(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    bundle = load_bundle(bundles["single"])
    assert "ood_score" in [o.name for o in bundle.manifest.outputs]
    got = _cpu(bundle).infer(_frames(2))
    assert got.ood_score is not None and np.isfinite(got.ood_score).all()
    # A manifest whose outputs the rebuilt graph does not give (here: a fold ensemble's
    # 4th output for a single MAU-Net) is refused, never run with an output missing.
    copy = _copy(bundles["single"], tmp_path / "outputs")
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest["outputs"].append({"name": "seg_uncertainty", "shape": ["batch"]})
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    with pytest.raises(HeadsError, match=r"model\.onnx returns .*seg_uncertainty"):
        _cpu(load_bundle(copy))


@pytest.mark.parametrize(("n", "padded"), [(1, 1), (2, 2), (3, 4), (5, 8), (8, 8), (7, 8)])
def test_batches_are_padded_to_few_shapes(n: int, padded: int) -> None:
    assert padded_batch(n, 8) == padded


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs torch with a CUDA GPU")
@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_cuda_fp16_matches_onnxruntime_cpu(
    bundles: dict[str, Path], family: str, compiled: bool
) -> None:
    bundle = load_bundle(bundles[family])
    backend = TorchBackend(bundle, device="cuda", precision="fp16", compile=compiled)
    reference = create_backend(bundle, RuntimeConfig(backend="onnxruntime-cpu"), workers=1)
    for n in (1, 3, 8, 11):
        x = _frames(n)
        got, want = backend.infer(x), reference.infer(x)
        assert got.lesion_prob.dtype == np.float32
        np.testing.assert_allclose(got.lesion_prob, want.lesion_prob, atol=2e-2)
        np.testing.assert_allclose(got.class_prob, want.class_prob, atol=2e-2)
        # The OOD head runs in float32 on the FP16 features: finite, and close in relative
        # terms (the features themselves are rounded to FP16).
        assert got.ood_score is not None and want.ood_score is not None
        assert np.isfinite(got.ood_score).all()
        np.testing.assert_allclose(got.ood_score, want.ood_score, rtol=5e-2, atol=1e-2)
        if want.seg_uncertainty is not None:
            assert got.seg_uncertainty is not None
            np.testing.assert_allclose(got.seg_uncertainty, want.seg_uncertainty, atol=2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs torch with a CUDA GPU")
def test_factory_picks_torch_cuda_when_only_torch_has_cuda(
    tiny_bundle_with_weights: Bundle,
) -> None:
    from appliance.runtime.factory import CUDA, available_providers
    from exporters.tensorrt import tensorrt_version

    if tensorrt_version() is not None or CUDA in available_providers():
        pytest.skip("TensorRT or ONNX Runtime CUDA is installed: they come before torch-cuda")
    backend, skipped = select_backend(tiny_bundle_with_weights, RuntimeConfig())
    assert [s.backend for s in skipped] == ["tensorrt", "onnxruntime-cuda"]
    assert backend.name == "torch"
    assert "FP16" in backend.device
