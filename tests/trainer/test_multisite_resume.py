"""Training on several sites at once, the scanner-shift augmentation, and resuming a stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import trainer.loops
import trainer.resume
import trainer.run_config
from appliance.bundle import load_bundle
from appliance.preprocess import PreprocessParams
from tests.trainer.test_train import write_tiny_busi
from trainer.data import SITE_SHIFT, AugmentParams, DataError, augment_batch, load_datasets
from trainer.loops import Logger, train_segmenter
from trainer.resume import StageCheckpoint
from trainer.run_config import TrainConfig, paper_schedule
from trainer.seed import seed_everything
from trainer.train import parse_args, run


def test_load_datasets_joins_sites_split_by_split(tmp_path: Path) -> None:
    a = write_tiny_busi(tmp_path / "site_a", per_class=4)
    b = write_tiny_busi(tmp_path / "site_b", per_class=4)
    params = PreprocessParams(size=32)
    one = load_datasets([a], params, None)
    both = load_datasets([a, b], params, None)
    for split in ("train", "val", "test"):
        assert len(both[split]) == 2 * len(one[split])
        assert both[split].images.shape[1:] == (32, 32)
    names = both["train"].names
    assert len(set(names)) == len(names)  # no two sites share a name
    assert names[0].startswith("site_a/") and names[-1].startswith("site_b/")
    with pytest.raises(DataError, match="no manifest"):
        load_datasets([], params, None)


def test_site_shift_changes_only_the_content_and_keeps_the_border_zero() -> None:
    batch = torch.zeros(4, 1, 32, 32)
    batch[:, :, 8:24, 8:24] = 1.0
    gen = torch.Generator().manual_seed(0)
    plain = augment_batch(batch.clone(), gen, AugmentParams(max_rotation_deg=0, zoom=(1, 1)))
    gen = torch.Generator().manual_seed(0)
    shifted = augment_batch(
        batch.clone(), gen, AugmentParams(max_rotation_deg=0, zoom=(1, 1), speckle=0.3)
    )
    outside = batch == 0
    assert float(shifted[outside].abs().max()) == 0.0
    inside = ~outside
    # Speckle makes the flat square vary; without it the square stays (nearly) flat.
    assert float(shifted[inside].std()) > 5 * float(plain[inside].std()) + 0.05
    assert "speckle" in SITE_SHIFT.describe() and "depth gain" in SITE_SHIFT.describe()


def test_cli_takes_several_manifests_and_the_site_shift_profile(tmp_path: Path) -> None:
    args = ["--manifest", "a/m.csv", "--manifest", "b/m.csv", "--augment", "site-shift"]
    cfg, _ = parse_args([*args, "--out", str(tmp_path)])
    assert cfg.manifests == (Path("a/m.csv"), Path("b/m.csv"))
    assert cfg.augment == SITE_SHIFT and cfg.resume


class _Interrupt(Exception):
    pass


def _cfg(tmp_path: Path, manifest: Path, work: str, schedule: str = "default") -> TrainConfig:
    cfg = TrainConfig(
        manifest=manifest,
        out=tmp_path / f"bundle-{work}",
        work_dir=tmp_path / work,
        cache_dir=tmp_path / "cache",
        size=32,
        base_width=4,
        cls_widths=(4, 8),
        batch_size=4,
        epochs_seg=3 if schedule == "default" else 4,
        epochs_cls=2,
    )
    return paper_schedule(cfg) if schedule == "paper" else cfg


def _stage1(cfg: TrainConfig, log: Logger) -> dict[str, torch.Tensor]:
    gen = seed_everything(cfg.seed, threads=1)
    data = load_datasets(cfg.manifests, cfg.preprocess_params(), cfg.cache_dir)
    model, _ = train_segmenter(cfg, data["train"], data["val"], gen, log)
    return model.state_dict()


@pytest.mark.parametrize("schedule", ["default", "paper"])
def test_an_interrupted_stage_resumes_to_the_same_weights(
    tmp_path: Path, schedule: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # paper: patience 0, so ReduceLROnPlateau cuts the rate after every epoch without a new
    # best and the resumed run must carry the scheduler's state (its best, its bad epochs).
    monkeypatch.setattr(trainer.run_config, "PAPER_PLATEAU_PATIENCE", 0)
    manifest = write_tiny_busi(tmp_path / "busi", per_class=4)
    straight = _cfg(tmp_path, manifest, "straight", schedule)
    straight_log = Logger(tmp_path / "straight.json", straight)
    expected = _stage1(straight, straight_log)
    epochs = straight.epochs_seg

    resumed = _cfg(tmp_path, manifest, "resumed", schedule)
    ckpt = StageCheckpoint(resumed.work_dir, "stage1")

    class Killed(Logger):
        def epoch(self, stage: str, record: dict[str, Any]) -> None:
            super().epoch(stage, record)
            if record["epoch"] == epochs - 1:
                raise _Interrupt  # after the epoch was logged; its checkpoint follows

    # The checkpoint is written after the log line, so a kill at epoch k's log leaves k - 1.
    with pytest.raises(_Interrupt):
        _stage1(resumed, Killed(tmp_path / "resumed.json", resumed))
    saved = ckpt.load()
    assert saved is not None and saved["epoch"] == epochs - 2
    log = Logger(tmp_path / "resumed.json", resumed)
    got = _stage1(resumed, log)
    assert [r["epoch"] for r in log.data["stage1"]] == list(range(1, epochs + 1))
    lrs = [r["lr"] for r in straight_log.data["stage1"]]
    assert [r["lr"] for r in log.data["stage1"]] == lrs
    if schedule == "paper":
        assert lrs[0] == trainer.run_config.PAPER_LR
        assert min(lrs) < lrs[0], "the plateau never cut the rate: the test would prove little"
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)


def test_a_checkpoint_of_other_settings_is_not_resumed(tmp_path: Path, capsys: Any) -> None:
    manifest = write_tiny_busi(tmp_path / "busi", per_class=4)
    cfg = _cfg(tmp_path, manifest, "work")
    _stage1(cfg, Logger(tmp_path / "a.json", cfg))
    other = TrainConfig(**{**cfg.__dict__, "lr_seg": 1e-2})
    log = Logger(tmp_path / "b.json", other)
    _stage1(other, log)
    assert "not resuming" in capsys.readouterr().out
    assert [r["epoch"] for r in log.data["stage1"]] == [1, 2, 3]


def test_a_finished_run_leaves_no_resume_files(tmp_path: Path) -> None:
    manifest = write_tiny_busi(tmp_path / "busi", per_class=4)
    cfg = _cfg(tmp_path, manifest, "work")
    bundle = load_bundle(run(cfg))
    assert not list(cfg.work_dir.glob("*.resume.pt"))
    recorded = bundle.manifest.training["manifests"]
    assert list(recorded) == ["busi/manifest.csv"]
    assert len(recorded["busi/manifest.csv"]) == 64
    assert np.isfinite(bundle.manifest.evaluation["busi_val"]["dice"])


def test_a_stage_stopped_on_its_budget_finishes_when_resumed_with_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_tiny_busi(tmp_path / "busi", per_class=4)
    straight = _cfg(tmp_path, manifest, "straight")
    expected = _stage1(straight, Logger(tmp_path / "straight.json", straight))

    # A clock that advances 25 s at every reading: a 0.05-minute budget (2.4 s of stage 1)
    # stops the stage early, whatever the machine's speed.
    clock = {"now": 0.0}

    def tick() -> float:
        clock["now"] += 25.0
        return clock["now"]

    monkeypatch.setattr(trainer.loops.time, "monotonic", tick)
    monkeypatch.setattr(trainer.resume.time, "monotonic", tick)
    cut = TrainConfig(**{**_cfg(tmp_path, manifest, "cut").__dict__, "max_minutes": 0.05})
    _stage1(cut, Logger(tmp_path / "cut.json", cut))
    saved = StageCheckpoint(cut.work_dir, "stage1").load()
    assert saved is not None and saved["done"] and saved["epoch"] < cut.epochs_seg
    stopped_at = int(saved["epoch"])

    again = Logger(tmp_path / "again.json", cut)  # the same budget: nothing more to train
    _stage1(cut, again)
    assert [r["epoch"] for r in again.data["stage1"]] == list(range(1, stopped_at + 1))

    more = TrainConfig(**{**cut.__dict__, "max_minutes": 1e6})  # the budget may change
    log = Logger(tmp_path / "more.json", more)
    got = _stage1(more, log)
    assert [r["epoch"] for r in log.data["stage1"]] == list(range(1, more.epochs_seg + 1))
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)
