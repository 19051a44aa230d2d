"""The settings of one training run (`TrainConfig`) and the optimiser schedule of a stage.

Two schedules (`TrainConfig.schedule`): ``default``, AdamW with warmup and cosine decay over
fixed epochs (the shipped bundle), and ``paper``, FAME's Adam 1e-4 / L2 1e-5 with
ReduceLROnPlateau and early stopping (`paper_schedule`). Either resumes exactly from the
per-epoch stage checkpoint. `trainer.loops` and `trainer.dual_stage_train` train with them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from appliance.preprocess import PreprocessParams
from trainer.data import AugmentParams
from trainer.models import BACKBONES

# Settings a resumed run may change: where it writes, its budget, its threads, its device.
_RESUMABLE_CHANGES = frozenset(
    {
        "out",
        "resume",
        "max_minutes",
        "threads",
        "device",
        "cache_dir",
        "bundle_name",
        "bundle_version",
    }
)


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of one training run; parsed once from the CLI, stored in the log."""

    manifest: Path
    out: Path
    # Further sites trained on together with `manifest` (each split joins its split).
    extra_manifests: tuple[Path, ...] = ()
    work_dir: Path = Path(".cache/train")
    cache_dir: Path = Path(".cache")
    size: int = 128
    seed: int = 2026
    threads: int = 2
    # Where the training steps run (`trainer.device`): "cpu", "cuda" / "cuda:N", or "auto".
    device: str = "cpu"
    base_width: int = 16
    # False: MAU-Net without that attention (the ablation variants of issue 10).
    channel_attention: bool = True
    spatial_attention: bool = True
    # > 0: stage 1 adds this weight of `trainer.losses.lesion_presence_loss` (against the
    # lesions drawn on normal images); 0: soft Dice + BCE alone, as the shipped bundle.
    presence_weight: float = 0.0
    # > 1: stage 1 draws each lesion-free training image this many times an epoch (against
    # the lesions drawn on normal images); 1: each image once, as the shipped bundle.
    normal_repeat: int = 1
    # > 1: stage 1 trains that many fold MAU-Nets, averaged (trainer.fold_training).
    folds: int = 1
    cls_widths: tuple[int, ...] = (32, 64, 128, 256)
    batch_size: int = 16
    epochs_seg: int = 40
    epochs_cls: int = 40
    lr_seg: float = 2e-3
    lr_cls: float = 1e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    dropout: float = 0.3
    max_minutes: float = 40.0
    seg_share: float = 0.8  # fraction of --max-minutes stage 1 may use
    min_lesion_area_px: int = 20
    augment: AugmentParams = field(default_factory=AugmentParams)
    resume: bool = True  # continue from <work_dir>/<stage>.resume.pt where one exists
    bundle_name: str = "fame-node-busi"
    bundle_version: str = "0.1.0"
    # "default": AdamW + warmup / cosine over the fixed epochs (the shipped bundle);
    # "paper": FAME's Adam 1e-4, L2 1e-5, ReduceLROnPlateau and early stopping
    # (`paper_schedule` sets the learning rates, L2 and flips to the paper's).
    schedule: str = "default"
    # A trained ACGAN (`trainer.acgan`): stage 2 adds its synthetic images of the minority
    # classes to every epoch until the classes are balanced. None: no synthetic images.
    acgan: Path | None = None
    # "dual-stage": the FAME ensemble classifier (`trainer.dual_stage_train`) at `profile`
    # ("edge" / "paper", `trainer.profiles`) over `backbones`; its meta-classifier trains
    # `epochs_meta` epochs after the `epochs_cls` of the backbones and their heads.
    classifier: str = "preact-resnet"
    profile: str = "edge"
    backbones: tuple[str, ...] = BACKBONES
    epochs_meta: int = 15
    # Distillation (`trainer.distill`): the sha256 of the teacher bundle's manifest.json, and
    # the weight and temperature of the soft terms. None: trained on the labels alone.
    teacher_sha256: str | None = None
    distil_weight: float = 1.0
    distil_temperature: float = 2.0

    def preprocess_params(self) -> PreprocessParams:
        return PreprocessParams(size=self.size)

    @property
    def manifests(self) -> tuple[Path, ...]:
        return (self.manifest, *self.extra_manifests)

    def fingerprint(self) -> str:
        """The settings a resumed stage must share with the run that saved it."""
        keep = {k: v for k, v in asdict(self).items() if k not in _RESUMABLE_CHANGES}
        if keep.get("folds") == 1:  # single-model runs keep the fingerprint they had
            del keep["folds"]
        # Likewise the default schedule and no ACGAN (checkpoints from before they existed).
        if keep.get("schedule") == "default":
            del keep["schedule"]
        if keep.get("acgan") is None:
            keep.pop("acgan", None)
        if keep.get("classifier") == "preact-resnet":  # and the dual-stage settings unused
            for key in ("classifier", "profile", "backbones", "epochs_meta"):
                keep.pop(key, None)
        if not keep.get("presence_weight"):  # and no presence term
            keep.pop("presence_weight", None)
        if keep.get("normal_repeat") == 1:  # and each image drawn once
            keep.pop("normal_repeat", None)
        if keep.get("teacher_sha256") is None:  # and the distillation settings unused
            for key in ("teacher_sha256", "distil_weight", "distil_temperature"):
                keep.pop(key, None)
        if not keep["augment"].get("vflip_p"):
            keep["augment"].pop("vflip_p", None)
        return json.dumps(keep, default=str, sort_keys=True)


SCHEDULES = ("default", "paper")
PAPER_LR = 1e-4
PAPER_L2 = 1e-5
PAPER_PLATEAU_FACTOR = 0.1
PAPER_PLATEAU_PATIENCE = 5
PAPER_EARLY_STOP_PATIENCE = 10


def paper_schedule(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with FAME's training recipe ("Hyperparameters", "Regularization"): Adam at
    lr 1e-4 for both stages, L2 1e-5 (Adam's weight_decay, i.e. added to the gradient),
    ReduceLROnPlateau (factor 0.1, patience 5) and early stopping (patience 10) on the
    selection metric, and the paper's flips: horizontal *and* vertical, next to the
    rotation and zoom every augmentation here already has."""
    return replace(
        cfg,
        schedule="paper",
        lr_seg=PAPER_LR,
        lr_cls=PAPER_LR,
        weight_decay=PAPER_L2,
        augment=replace(cfg.augment, vflip_p=0.5),
    )


class _Schedule:
    """The optimiser and learning-rate schedule of one stage, as `cfg.schedule` says.

    default: AdamW, a linear warmup over the first epoch then cosine decay, stepped per
    batch. paper: Adam with L2, ReduceLROnPlateau stepped per epoch on the selection
    metric (higher is better), and early stopping once `PAPER_EARLY_STOP_PATIENCE` epochs
    passed without a new best. Both states live in the optimiser / scheduler state dicts
    and the best epoch, which the stage checkpoint keeps, so a resumed run goes on exactly.
    """

    def __init__(
        self, cfg: TrainConfig, model: nn.Module, lr: float, steps: int, epochs: int
    ) -> None:
        if cfg.schedule not in SCHEDULES:
            raise ValueError(f"schedule {cfg.schedule!r}: expected one of {SCHEDULES}")
        self.paper = cfg.schedule == "paper"
        self.opt: torch.optim.Optimizer
        self.sched: torch.optim.lr_scheduler.LRScheduler
        if self.paper:
            self.opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
            self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.opt,
                mode="max",
                factor=PAPER_PLATEAU_FACTOR,
                patience=PAPER_PLATEAU_PATIENCE,
            )
        else:
            self.opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
            self.sched = torch.optim.lr_scheduler.LambdaLR(
                self.opt, _cosine_with_warmup(steps * epochs, steps)
            )

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def after_batch(self) -> None:
        self.opt.step()
        if not self.paper:
            self.sched.step()

    def after_epoch(self, metric: float) -> None:
        if self.paper:
            # An undefined metric (no lesion in val) counts as no improvement.
            self.sched.step(metric if math.isfinite(metric) else -1.0)  # type: ignore[arg-type]

    def early_stop(self, epoch: int, best_epoch: int) -> bool:
        return self.paper and epoch - best_epoch >= PAPER_EARLY_STOP_PATIENCE


def _cosine_with_warmup(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor
