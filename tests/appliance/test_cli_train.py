"""``fame-node train seg|cls|bundle`` (appliance.commands.train) on a tiny manifest of real
PNGs: the two stages one after the other through the real CLI, the refusal of a segmenter
of other settings, the arguments handed to ``trainer.train``, and the message without torch.
Takes about half a minute on 2 shared cores (two 1-epoch stages at 32 px); the whole-bundle
check with the paper schedule and an ACGAN is marked slow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from appliance.cli import _parser, main
from appliance.commands.train import INSTALL_HINT, trainer_argv
from tests.trainer.test_train import write_tiny_busi
from tests.trainer.tinybundle import tiny_config
from trainer.train import SEGMENTER_FILE, parse_args

TINY = ["--size", "32", "--epochs-seg", "1", "--epochs-cls", "1", "--threads", "1"]


def test_each_stage_maps_to_trainer_arguments(tmp_path: Path) -> None:
    args = _parser().parse_args(
        [
            "train",
            "cls",
            "--manifest",
            "a.csv",
            "--manifest",
            "b.csv",
            "--segmenter",
            "seg",
            "--out",
            str(tmp_path),
            "--schedule",
            "paper",
            "--acgan",
            "gan",
            "--size",
            "64",
            "--device",
            "cpu",
        ]
    )
    argv = trainer_argv(args)
    cfg, checkpoint = parse_args(argv)
    assert cfg.device == "cpu"
    assert cfg.manifests == (Path("a.csv"), Path("b.csv")) and checkpoint is None
    assert cfg.work_dir == tmp_path and cfg.schedule == "paper" and cfg.lr_cls == 1e-4
    assert cfg.acgan == Path("gan") and cfg.size == 64
    assert argv[argv.index("--stage") + 1] == "cls"
    assert argv[argv.index("--segmenter") + 1] == "seg"
    bundle = _parser().parse_args(["train", "bundle", "--manifest", "a.csv", "--out", "B"])
    argv = trainer_argv(bundle)
    assert "--stage" not in argv and argv[argv.index("--out") + 1] == "B"
    assert parse_args(argv)[0].schedule == "default"
    assert parse_args(argv)[0].classifier == "preact-resnet"
    assert parse_args(argv)[0].device == "cpu"  # reproducible unless a GPU is asked for


def test_profile_selects_the_dual_stage_classifier_and_folds_pass_on() -> None:
    base = ["train", "bundle", "--manifest", "a.csv", "--out", "B"]
    cfg, _ = parse_args(trainer_argv(_parser().parse_args([*base, "--profile", "edge"])))
    assert (cfg.classifier, cfg.profile) == ("dual-stage", "edge")
    cfg, _ = parse_args(trainer_argv(_parser().parse_args([*base, "--folds", "3"])))
    assert cfg.folds == 3 and cfg.classifier == "preact-resnet"
    explicit = [*base, "--profile", "paper", "--classifier", "preact-resnet"]
    cfg, _ = parse_args(trainer_argv(_parser().parse_args(explicit)))
    assert (cfg.classifier, cfg.profile) == ("preact-resnet", "paper")


def test_seg_then_cls_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = write_tiny_busi(tmp_path / "busi", per_class=4)
    common = ["--manifest", str(manifest), "--cache-dir", str(tmp_path / "cache"), *TINY]
    seg, cls = tmp_path / "seg", tmp_path / "cls"
    assert main(["train", "seg", *common, "--out", str(seg)]) == 0
    assert (seg / SEGMENTER_FILE).is_file()
    assert not list(seg.glob("*.resume.pt"))  # a finished stage leaves nothing to resume
    log = json.loads((seg / "training_log.json").read_text())
    assert [r["epoch"] for r in log["stage1"]] == [1] and "val_dice" in log["stage1"][0]
    assert main(["train", "cls", *common, "--segmenter", str(seg), "--out", str(cls)]) == 0
    state = torch.load(cls / "checkpoint.pt", weights_only=True)
    assert set(state) == {"segmenter", "classifier", "counts"}
    saved = torch.load(seg / SEGMENTER_FILE, weights_only=True)
    for key, value in saved["segmenter"].items():  # stage 2 kept the segmenter frozen
        assert torch.equal(state["segmenter"][key], value), key
    log = json.loads((cls / "training_log.json").read_text())
    assert log["stage1_summary"]["epochs_run"] == 1  # stage 1's records travel with it
    assert [r["epoch"] for r in log["stage2"]] == [1] and "val_macro_f1" in log["stage2"][0]
    assert log["stage2_summary"]["synthetic"] is None
    # A classifier stage at another size than its segmenter is refused, saying which.
    other = [c if c != "32" else "48" for c in common]
    code = main(["train", "cls", *other, "--segmenter", str(seg), "--out", str(tmp_path / "x")])
    assert code == 2
    assert "size" in capsys.readouterr().err


def test_cls_without_a_trained_segmenter_says_what_to_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write_tiny_busi(tmp_path / "busi", per_class=4)
    code = main(
        [
            "train",
            "cls",
            "--manifest",
            str(manifest),
            "--segmenter",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "cls"),
            *TINY,
        ]
    )
    assert code == 2
    assert "fame-node train seg" in capsys.readouterr().err


def test_without_torch_the_command_says_what_to_install(tmp_path: Path) -> None:
    # sys.modules["torch"] = None makes `import torch` fail as on a node without the extra.
    code = (
        "import sys; sys.modules['torch'] = None; from appliance.cli import main; "
        f"sys.exit(main(['train', 'seg', '--manifest', 'm.csv', '--out', {str(tmp_path)!r}]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, done.stderr
    assert INSTALL_HINT in done.stderr


@pytest.mark.slow  # about 90 s on 2 loaded cores: two stages and a whole bundle export
def test_the_bundle_records_the_paper_schedule_and_the_acgan(tmp_path: Path) -> None:
    # Through trainer.train.run, what `train bundle` calls: the command line has no
    # classifier widths, and the OOD head of a bundle needs features narrower than 7 cases.
    from appliance.bundle import load_bundle
    from trainer.acgan import ACGANConfig, train_acgan
    from trainer.run_config import paper_schedule
    from trainer.train import run

    manifest = write_tiny_busi(tmp_path / "busi", per_class=4)
    gan = ACGANConfig(
        manifests=(manifest,),
        out=tmp_path / "gan",
        work_dir=tmp_path / "gan-work",
        cache_dir=tmp_path / "cache",
        size=32,
        latent_dim=8,
        width=4,
        batch_size=4,
        epochs=1,
    )
    train_acgan(gan)
    cfg = tiny_config(manifest, tmp_path, acgan=gan.out)
    training = load_bundle(run(paper_schedule(cfg))).manifest.training
    assert "ReduceLROnPlateau" in training["stage1"]["optimizer"]
    assert "vertical flip" in training["augmentation"]
    synthetic = training["stage2"]["synthetic"]
    assert sum(synthetic["per_class_per_epoch"].values()) > 0
    recorded = training["manifests"]["busi/manifest.csv"]
    assert synthetic["acgan_manifests"] == {"busi/manifest.csv": recorded}
