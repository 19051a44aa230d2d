"""Where training runs (`trainer.device`): the CPU, or a CUDA GPU where one is asked for.

The CPU tests run everywhere; the ``gpu`` ones train a tiny bundle on the GPU of a lent
machine and resume its checkpoints on the CPU."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from appliance.bundle import load_bundle
from tests.trainer.test_train import write_tiny_busi
from tests.trainer.tinybundle import tiny_config
from trainer.device import DeviceError, describe, resolve
from trainer.train import run

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")


def test_cpu_is_the_cpu_and_an_unknown_device_is_refused() -> None:
    assert resolve("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="expected one of"):
        resolve("tpu")


@no_gpu
def test_without_a_gpu_auto_is_the_cpu_and_cuda_says_what_to_do() -> None:
    assert resolve("auto") == torch.device("cpu")
    with pytest.raises(DeviceError, match=r"sees no CUDA GPU.*--device cpu"):
        resolve("cuda")


@no_gpu
def test_the_command_refuses_a_gpu_it_does_not_have_before_any_work(tmp_path: Path) -> None:
    from trainer.train import main

    manifest = write_tiny_busi(tmp_path / "busi", per_class=1)
    argv = ["--manifest", str(manifest), "--out", str(tmp_path / "b"), "--device", "cuda"]
    with pytest.raises(SystemExit, match=r"--device: .*sees no CUDA GPU"):
        main([*argv, "--work-dir", str(tmp_path / "work")])
    assert not (tmp_path / "work").exists()


def test_a_run_may_resume_on_another_device(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "m.csv", tmp_path)
    assert replace(cfg, device="cuda").fingerprint() == cfg.fingerprint()
    assert replace(cfg, size=64).fingerprint() != cfg.fingerprint()


def test_a_run_records_the_device_auto_chose(tmp_path: Path) -> None:
    cfg = tiny_config(write_tiny_busi(tmp_path / "busi", per_class=4), tmp_path, device="auto")
    bundle = load_bundle(run(cfg))
    log = json.loads((bundle.path / "training_log.json").read_text())
    chosen = describe(resolve("auto"))  # "cpu" here, "cuda:0 (<its name>)" on a GPU machine
    assert log["stage1_summary"]["device"] == chosen
    assert log["stage2_summary"]["device"] == chosen


@pytest.mark.parametrize("classifier", ["preact-resnet", "dual-stage"])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs torch with a CUDA GPU")
def test_trained_on_the_gpu_then_resumed_on_the_cpu(tmp_path: Path, classifier: str) -> None:
    manifest = write_tiny_busi(tmp_path / "busi", per_class=4)
    on_gpu = tiny_config(
        manifest,
        tmp_path,
        device="cuda",
        classifier=classifier,
        epochs_seg=1,
        epochs_cls=1,
        epochs_meta=1,
    )
    bundle = load_bundle(run(on_gpu))  # exported, verified, ONNX parity checked on the CPU
    log = json.loads((bundle.path / "training_log.json").read_text())
    assert log["stage1_summary"]["device"].startswith("cuda:0 (")
    assert log["stage2_summary"]["device"].startswith("cuda:0 (")
    # A stage checkpoint written on the GPU goes on on the CPU (a longer schedule).
    from trainer.loops import Logger, train_segmenter
    from trainer.seed import seed_everything
    from trainer.train import load_train_val

    first = replace(on_gpu, work_dir=tmp_path / "seg", epochs_seg=1, out=tmp_path / "x")
    train, val = load_train_val(first)
    train_segmenter(first, train, val, seed_everything(0), Logger(tmp_path / "l.json", first))
    later = replace(first, device="cpu", epochs_seg=2)
    model, summary = train_segmenter(
        later, train, val, seed_everything(0), Logger(tmp_path / "l2.json", later)
    )
    assert summary["epochs_run"] == 2 and summary["device"] == "cpu"
    assert all(p.device.type == "cpu" for p in model.parameters())
