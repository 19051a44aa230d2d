"""The command line of ``python -m trainer.train`` (also behind ``fame-node train``): every
option, and the `TrainConfig` it gives. `trainer.train.main` runs what it says."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from trainer.data import SITE_SHIFT, AugmentParams
from trainer.device import DeviceError, resolve
from trainer.dual_stage_train import CLASSIFIERS
from trainer.models.dual_stage import BACKBONES
from trainer.profiles import PROFILES
from trainer.run_config import SCHEDULES, TrainConfig, paper_schedule

DESCRIPTION = "Training of the default FAME Node model on BUSI, and its export as a model bundle."


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, Path | None]:
    """The run's settings and ``--from-checkpoint`` (None: train)."""
    cfg, a = parse(argv)
    return cfg, a.from_checkpoint


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m trainer.train`` (also behind ``fame-node train``)."""
    parser = argparse.ArgumentParser(prog="python -m trainer.train", description=DESCRIPTION)
    d = TrainConfig(manifest=Path(), out=Path())
    parser.add_argument(
        "--manifest",
        type=Path,
        action="append",
        required=True,
        help="manifest.csv of the data; repeat it to train on several sites together",
    )
    parser.add_argument(
        "--augment",
        choices=("default", "site-shift"),
        default="default",
        help="site-shift: wider gain / contrast / geometry and speckle, against scanner shift",
    )
    parser.add_argument(
        "--no-resume",
        action="store_true",
        help="start over even where <work-dir> holds an unfinished run with these settings",
    )
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    parser.add_argument("--work-dir", type=Path, default=d.work_dir, help="checkpoint and log")
    parser.add_argument("--cache-dir", type=Path, default=d.cache_dir, help="preprocessed arrays")
    parser.add_argument("--size", type=int, default=d.size, help="network input side (x16)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--name", default=d.bundle_name, help="the bundle's name")
    parser.add_argument("--version", default=d.bundle_version, help="the bundle's version")
    parser.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    parser.add_argument(
        "--device",
        default=d.device,
        help="where the training steps run: cpu (default), cuda (cuda:N), or auto (a GPU "
        "where torch sees one, else the CPU); data, checkpoints and export stay on the CPU",
    )
    parser.add_argument("--base-width", type=int, default=d.base_width, help="MAU-Net width")
    parser.add_argument(
        "--presence-weight",
        type=float,
        default=d.presence_weight,
        help="stage 1: weight of the lesion-presence loss (the top 0.5 %% of each image's "
        "logits against whether it has a lesion), against lesions drawn on normal images; "
        "0 (default): soft Dice + BCE alone",
    )
    parser.add_argument(
        "--normal-repeat",
        type=int,
        default=d.normal_repeat,
        help="stage 1: draw each lesion-free training image this many times an epoch, "
        "against lesions drawn on normal images; 1 (default): each image once",
    )
    parser.add_argument(
        "--folds",
        type=int,
        default=d.folds,
        help="> 1: train that many fold MAU-Nets (folds by group / patient) and ship their "
        "averaged map with a per-image uncertainty (the FAME 3-fold ensemble)",
    )
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--epochs-seg", type=int, default=d.epochs_seg, help="stage 1 epochs")
    parser.add_argument("--epochs-cls", type=int, default=d.epochs_cls, help="stage 2 epochs")
    parser.add_argument("--lr-seg", type=float, default=d.lr_seg)
    parser.add_argument("--lr-cls", type=float, default=d.lr_cls)
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=d.max_minutes,
        help="wall budget of both stages; training stops after the epoch that "
        "would overrun it and keeps the best checkpoint",
    )
    parser.add_argument(
        "--seg-share",
        type=float,
        default=d.seg_share,
        help="fraction of --max-minutes stage 1 may use",
    )
    parser.add_argument(
        "--from-checkpoint",
        type=Path,
        default=None,
        help="skip training: export this checkpoint (its training_log.json must be next to it)",
    )
    parser.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default=d.schedule,
        help="default: AdamW, warmup + cosine over the fixed epochs (the shipped bundle); "
        "paper: FAME's Adam 1e-4, L2 1e-5, ReduceLROnPlateau 0.1 / 5, early stopping 10, "
        "vertical flips too (the learning rates of --lr-seg / --lr-cls are then 1e-4)",
    )
    parser.add_argument(
        "--acgan",
        type=Path,
        default=None,
        metavar="DIR",
        help="a trained ACGAN (python -m trainer.acgan): stage 2 adds its images of the "
        "minority classes to every epoch until the classes are balanced",
    )
    parser.add_argument(
        "--stage",
        choices=("all", "seg", "cls"),
        default="all",
        help="all: both stages and the bundle; seg: MAU-Net only, saved in --work-dir; "
        "cls: the classifier on the segmenter saved in --segmenter (checkpoint.pt in "
        "--work-dir, exported with --from-checkpoint)",
    )
    parser.add_argument(
        "--segmenter", type=Path, default=None, help="--stage cls: the --stage seg folder"
    )
    parser.add_argument(
        "--classifier",
        choices=CLASSIFIERS,
        default=d.classifier,
        help="preact-resnet: the small ResNet (--cls widths); dual-stage: the FAME ensemble "
        "of ResNet50V2, NASNet-A and the MAU-Net encoder with a meta-classifier",
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default=d.profile)
    parser.add_argument(
        "--backbones",
        nargs="+",
        choices=BACKBONES,
        default=list(d.backbones),
        help="dual-stage: the backbones fused (one alone: the ablation)",
    )
    parser.add_argument(
        "--epochs-meta", type=int, default=d.epochs_meta, help="dual-stage: stage-two epochs"
    )
    return parser


def parse(argv: list[str] | None) -> tuple[TrainConfig, argparse.Namespace]:
    a = build_parser().parse_args(argv)
    return config_from(a), a


def config_from(a: argparse.Namespace) -> TrainConfig:
    """The `TrainConfig` of parsed arguments (`build_parser`'s, or a parser built on it)."""
    cfg = TrainConfig(
        manifest=a.manifest[0],
        extra_manifests=tuple(a.manifest[1:]),
        augment=SITE_SHIFT if a.augment == "site-shift" else AugmentParams(),
        resume=not a.no_resume,
        bundle_name=a.name,
        bundle_version=a.version,
        out=a.out,
        work_dir=a.work_dir,
        cache_dir=a.cache_dir,
        size=a.size,
        seed=a.seed,
        threads=a.threads,
        device=a.device,
        base_width=a.base_width,
        presence_weight=a.presence_weight,
        normal_repeat=a.normal_repeat,
        folds=a.folds,
        batch_size=a.batch_size,
        epochs_seg=a.epochs_seg,
        epochs_cls=a.epochs_cls,
        lr_seg=a.lr_seg,
        lr_cls=a.lr_cls,
        max_minutes=a.max_minutes,
        seg_share=a.seg_share,
        classifier=a.classifier,
        profile=a.profile,
        backbones=tuple(a.backbones),
        epochs_meta=a.epochs_meta,
    )
    if a.schedule == "paper":
        cfg = paper_schedule(cfg)
    if a.acgan is not None:
        cfg = replace(cfg, acgan=a.acgan)
    cfg.preprocess_params()  # validates --size
    if not cfg.presence_weight >= 0:
        raise SystemExit(f"--presence-weight must be 0 or more, got {cfg.presence_weight}")
    if cfg.normal_repeat < 1:
        raise SystemExit(f"--normal-repeat must be 1 or more, got {cfg.normal_repeat}")
    try:
        resolve(cfg.device)  # a GPU asked for where there is none: say so before any work
    except DeviceError as exc:
        raise SystemExit(f"--device: {exc}") from None
    return cfg
