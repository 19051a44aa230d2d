"""``fame-node export onnx|engines|triton`` on a tiny bundle, through the real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.bundle import load_bundle
from appliance.cli import main
from appliance.runtime.variants import FP16_FILE, TORCH_FILE
from exporters.tensorrt import tensorrt_version
from tests.exporters.tinybundle import make_tiny_bundle, save_checkpoint, tiny_net


@pytest.fixture
def bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FAME_NODE_PATHS__ROOT", str(tmp_path / "node"))
    monkeypatch.setenv("FAME_NODE_RUNTIME__ENGINE_CACHE_DIR", str(tmp_path / "engines"))
    return make_tiny_bundle(tmp_path / "bundle")


def test_export_onnx_adds_fp16_and_torch_weights(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = save_checkpoint(tiny_net(), tmp_path / "checkpoint.pt")
    assert main(["export", "onnx", "--bundle", str(bundle), "--checkpoint", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "onnx re-export" in out and "parity at batch [1, 3]" in out
    files = load_bundle(bundle).manifest.files
    assert {FP16_FILE, TORCH_FILE} <= set(files)
    assert "onnx_fp16" in load_bundle(bundle).manifest.evaluation


def test_export_onnx_refuses_weights_of_another_model(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = save_checkpoint(tiny_net(seed=1), tmp_path / "other.pt")
    assert main(["export", "onnx", "--bundle", str(bundle), "--checkpoint", str(ckpt)]) == 1
    assert "do not compute bundle" in capsys.readouterr().err
    assert TORCH_FILE not in load_bundle(bundle).manifest.files


def test_a_signed_bundle_is_copied_not_changed(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from appliance.models.signing import (
        SIGNATURE_NAME,
        generate_keypair,
        load_private_key,
        sign_manifest,
    )

    private, _ = generate_keypair(tmp_path / "coordinator")
    signature = sign_manifest((bundle / "manifest.json").read_bytes(), load_private_key(private))
    (bundle / SIGNATURE_NAME).write_bytes(signature)
    before = (bundle / "manifest.json").read_bytes()
    assert main(["export", "onnx", "--bundle", str(bundle)]) == 1
    assert "is signed" in capsys.readouterr().err
    copy = tmp_path / "copy"
    assert main(["export", "onnx", "--bundle", str(bundle), "--out", str(copy)]) == 0
    assert FP16_FILE in load_bundle(copy).manifest.files
    assert not (copy / SIGNATURE_NAME).exists()  # to be signed again
    assert (bundle / "manifest.json").read_bytes() == before


@pytest.mark.skipif(tensorrt_version() is not None, reason="TensorRT is installed here")
def test_export_engines_explains_why_not(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "engines", "--bundle", str(bundle)]) == 1
    err = capsys.readouterr().err
    assert "cannot build TensorRT engines on this machine" in err
    assert "TensorRT is not installed" in err


def test_export_triton(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "repo"
    assert main(["export", "triton", "--bundle", str(bundle), "--out", str(repo)]) == 0
    assert (repo / "fame_node_onnx" / "config.pbtxt").is_file()
    assert (repo / "fame_node" / "config.pbtxt").is_file()
    assert "no TensorRT plans" in capsys.readouterr().out
    assert main(["export", "triton", "--bundle", str(bundle), "--out", str(repo)]) == 1
