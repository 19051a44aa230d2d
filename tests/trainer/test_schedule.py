"""The paper's training schedule (`trainer.run_config.paper_schedule`, `_Schedule`), the default
one it sits beside, early stopping, and the per-epoch progress bar (`trainer.progress`).
The resumed-equals-uninterrupted check under both schedules is in test_multisite_resume."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from trainer.data import AugmentParams
from trainer.progress import EpochProgress, bar_text
from trainer.run_config import (
    PAPER_EARLY_STOP_PATIENCE,
    PAPER_L2,
    PAPER_LR,
    TrainConfig,
    _Schedule,
    paper_schedule,
)
from trainer.train import parse_args


def _cfg(**changes: object) -> TrainConfig:
    return TrainConfig(manifest=Path("m.csv"), out=Path("out"), **changes)  # type: ignore[arg-type]


def test_paper_schedule_sets_the_recipe_and_keeps_the_rest() -> None:
    base = _cfg(base_width=8)
    paper = paper_schedule(base)
    assert (paper.schedule, paper.lr_seg, paper.lr_cls) == ("paper", PAPER_LR, PAPER_LR)
    assert paper.weight_decay == PAPER_L2 and paper.augment.vflip_p == 0.5
    assert paper.base_width == 8 and paper.augment.max_rotation_deg == base.augment.max_rotation_deg
    assert "vertical flip p=0.5" in paper.augment.describe()
    assert paper.fingerprint() != base.fingerprint()
    cfg, _ = parse_args(["--manifest", "m.csv", "--out", "out", "--schedule", "paper"])
    assert cfg == paper_schedule(_cfg())  # the command line gives the same recipe


def test_default_fingerprint_is_the_one_checkpoints_were_written_with() -> None:
    # The fields added for the paper schedule, the ACGAN and the vertical flip are left out at
    # their defaults, so a run interrupted before they existed still resumes.
    keep = json.loads(_cfg().fingerprint())
    assert "schedule" not in keep and "acgan" not in keep and "vflip_p" not in keep["augment"]
    assert "acgan" in json.loads(_cfg(acgan=Path("gan")).fingerprint())
    # Likewise the presence term: off, it is not there; on, a checkpoint without it is
    # not resumed as if it had been trained with it.
    assert "presence_weight" not in keep and "normal_repeat" not in keep
    assert json.loads(_cfg(presence_weight=1.0).fingerprint())["presence_weight"] == 1.0
    assert json.loads(_cfg(normal_repeat=4).fingerprint())["normal_repeat"] == 4


def test_presence_weight_comes_from_the_command_line_and_is_checked() -> None:
    cfg, _ = parse_args(["--manifest", "m.csv", "--out", "out", "--presence-weight", "0.5"])
    assert cfg.presence_weight == 0.5
    assert parse_args(["--manifest", "m.csv", "--out", "out"])[0].presence_weight == 0.0
    with pytest.raises(SystemExit, match="presence-weight"):
        parse_args(["--manifest", "m.csv", "--out", "out", "--presence-weight", "-1"])
    cfg, _ = parse_args(["--manifest", "m.csv", "--out", "out", "--normal-repeat", "4"])
    assert cfg.normal_repeat == 4
    with pytest.raises(SystemExit, match="normal-repeat"):
        parse_args(["--manifest", "m.csv", "--out", "out", "--normal-repeat", "0"])


def test_paper_plateau_cuts_the_rate_and_early_stopping_follows() -> None:
    model = nn.Linear(2, 1)
    s = _Schedule(paper_schedule(_cfg()), model, PAPER_LR, steps=4, epochs=40)
    assert isinstance(s.opt, torch.optim.Adam) and s.opt.defaults["weight_decay"] == PAPER_L2
    s.after_batch()
    assert s.lr == PAPER_LR  # stepped per epoch, never per batch
    s.after_epoch(0.5)  # the best
    for _ in range(5):  # patience 5: five epochs without a better value keep the rate
        s.after_epoch(0.4)
    assert s.lr == PAPER_LR
    s.after_epoch(float("nan"))  # an undefined metric is no improvement: the sixth
    assert s.lr == pytest.approx(PAPER_LR * 0.1)
    assert not s.early_stop(epoch=PAPER_EARLY_STOP_PATIENCE, best_epoch=1)
    assert s.early_stop(epoch=PAPER_EARLY_STOP_PATIENCE + 1, best_epoch=1)
    # The state a checkpoint keeps brings a new schedule to the same point.
    again = _Schedule(paper_schedule(_cfg()), model, PAPER_LR, steps=4, epochs=40)
    again.opt.load_state_dict(s.opt.state_dict())
    again.sched.load_state_dict(s.sched.state_dict())
    assert again.lr == s.lr and again.sched.state_dict() == s.sched.state_dict()


def test_default_schedule_warms_up_per_batch_and_never_stops_early() -> None:
    s = _Schedule(_cfg(), nn.Linear(2, 1), 1e-3, steps=4, epochs=2)
    assert isinstance(s.opt, torch.optim.AdamW)
    first = s.lr
    s.after_batch()
    assert s.lr > first  # warmup over the first epoch's 4 steps
    assert not s.early_stop(epoch=1000, best_epoch=1)
    with pytest.raises(ValueError, match="expected one of"):
        _Schedule(_cfg(schedule="cosine"), nn.Linear(2, 1), 1e-3, steps=4, epochs=2)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal() -> None:
    assert bar_text("stage1", 3, 40, 12, 24, 0.4321, 4.2) == (
        "[stage1] epoch 3/40 |############............| 12/24 loss 0.4321 4 s"
    )
    tty = _Terminal()
    bar = EpochProgress("stage2", 1, 2, batches=2, stream=tty)
    bar.update(1.0, 4)
    bar.update(0.5, 4)
    bar.close()
    text = tty.getvalue()
    assert "\r[stage2] epoch 1/2 |" in text and "2/2 loss 0.7500" in text
    assert text.endswith("\r")  # the line is cleared for the epoch's log line
    log = io.StringIO()  # not a terminal (nohup, CI): nothing; the epoch line is the log's
    bar = EpochProgress("stage2", 1, 2, batches=2, stream=log)
    bar.update(1.0, 4)
    bar.close()
    assert log.getvalue() == ""


def test_augment_params_default_has_no_vertical_flip() -> None:
    assert AugmentParams().vflip_p == 0.0 and "no vertical flip" in AugmentParams().describe()
