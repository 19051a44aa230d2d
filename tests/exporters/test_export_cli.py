"""``fame-node export onnx|engines|triton`` on a tiny bundle, through the real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.bundle import load_bundle
from appliance.cli import main
from appliance.runtime.variants import FP16_FILE
from exporters.tensorrt import tensorrt_version
from tests.exporters.tinybundle import make_tiny_bundle


@pytest.fixture
def bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FAME_NODE_PATHS__ROOT", str(tmp_path / "node"))
    monkeypatch.setenv("FAME_NODE_RUNTIME__ENGINE_CACHE_DIR", str(tmp_path / "engines"))
    return make_tiny_bundle(tmp_path / "bundle")


def test_export_onnx_adds_fp16(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "onnx", "--bundle", str(bundle)]) == 0
    assert "bundle updated and verified" in capsys.readouterr().out
    manifest = load_bundle(bundle).manifest
    assert FP16_FILE in manifest.files and "onnx_fp16" in manifest.evaluation
    assert not any(rel.endswith(".pt") for rel in manifest.files)  # no pickle is written


def test_export_onnx_checkpoint_is_refused_with_what_replaced_it(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (bundle / "manifest.json").read_bytes()
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(b"never read")
    assert main(["export", "onnx", "--bundle", str(bundle), "--checkpoint", str(ckpt)]) == 1
    err = capsys.readouterr().err
    assert "no model.pt is written" in err and "heads.safetensors" in err
    assert "trainer.refit_heads" in err
    assert (bundle / "manifest.json").read_bytes() == before


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
