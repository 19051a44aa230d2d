"""Training of the default FAME Node model on BUSI, and its export as a model bundle.

Stage 1 trains MAU-Net with Dice + BCE and keeps the epoch with the best validation Dice;
the mask threshold is then chosen on validation. Stage 2 freezes MAU-Net and trains the
classifier on [image, predicted lesion probability] with class-weighted cross-entropy,
keeping the epoch with the best validation macro-F1 (ties: macro AUC). Only the ``train``
split is trained on and only ``val`` is used for selection; ``test`` is never touched.

The best weights are saved as a checkpoint (``<work-dir>/checkpoint.pt``); the final step
exports `FameNodeNet` to ONNX with a parity check and writes the bundle. A saved checkpoint
can be exported again without training (``--from-checkpoint``).

    python -m trainer.train --manifest ../shared/data/busi/manifest.csv --out models/default \\
        --size 128 --epochs-seg 40 --epochs-cls 40 --max-minutes 40

``--schedule paper`` trains with the FAME recipe instead (`trainer.run_config.paper_schedule`);
``--acgan DIR`` balances stage 2 with a trained ACGAN's images (`trainer.acgan`);
``--stage seg`` / ``--stage cls --segmenter DIR`` run one stage alone (``fame-node train``).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from trainer.data import ArraySet, load_datasets, manifest_label
from trainer.dual_stage_train import (
    STAGE_TWO,
    classifier_for,
    describe,
    train_any_classifier,
)
from trainer.loops import (
    THRESHOLDS,
    Logger,
    choose_threshold,
    classification_metrics,
    segmentation_metrics,
    train_segmenter,
    validate,
)
from trainer.models import CLASSES, FameNodeNet, FoldEnsemble, MAUNet
from trainer.resume import StageCheckpoint
from trainer.run_config import (
    PAPER_EARLY_STOP_PATIENCE,
    PAPER_PLATEAU_FACTOR,
    PAPER_PLATEAU_PATIENCE,
    TrainConfig,
)
from trainer.seed import seed_everything
from trainer.train_cli import build_parser, parse, parse_args

__all__ = [
    "THRESHOLDS",
    "TrainConfig",
    "build_parser",
    "choose_threshold",
    "classification_metrics",
    "export_checkpoint",
    "load_checkpoint",
    "main",
    "parse_args",
    "run",
    "segmentation_metrics",
]

DATASET_CITATION = (
    "W. Al-Dhabyani, M. Gomaa, H. Khaled, A. Fahmy, 'Dataset of breast ultrasound images', "
    "Data in Brief 28 (2020) 104863"
)
DATASET_CITATIONS = {
    "busi": DATASET_CITATION,
    "busbra": (
        "W. Gómez-Flores, M. J. Gregorio-Calas, W. C. de Albuquerque Pereira, 'BUS-BRA: A "
        "Breast Ultrasound Dataset for Assessing Computer-aided Diagnosis Systems', Medical "
        "Physics, 2023"
    ),
}


def run(cfg: TrainConfig) -> Path:
    """Train both stages, save the checkpoint, export the bundle; returns the bundle path."""
    start = time.monotonic()
    gen = seed_everything(cfg.seed, threads=cfg.threads)
    train, val = load_train_val(cfg)
    for m in cfg.extra_manifests:
        print(f"also training on {m}", flush=True)
    print(
        f"data: train {len(train)} {train.class_counts()}, val {len(val)} "
        f"{val.class_counts()} (classes {list(CLASSES)})",
        flush=True,
    )
    log = Logger(cfg.work_dir / "training_log.json", cfg)
    segmenter: MAUNet | FoldEnsemble
    if cfg.folds > 1:  # the K-fold MAU-Net ensemble (trainer.fold_training)
        from trainer.fold_training import train_fold_ensemble

        segmenter, _ = train_fold_ensemble(cfg, train, val, log)
    else:
        segmenter, _ = train_segmenter(cfg, train, val, gen, log)
    classifier, _ = train_any_classifier(
        cfg, segmenter, train, val, gen, log, deadline=start + 60.0 * cfg.max_minutes
    )
    checkpoint = _save_checkpoint(cfg, log, segmenter, classifier, (len(train), len(val)), start)
    bundle = export_checkpoint(cfg, checkpoint, log.path)
    for stage in ("stage1", "stage2", STAGE_TWO):  # the run is complete: nothing to resume
        StageCheckpoint(cfg.work_dir, stage).clear()
    for i in range(cfg.folds if cfg.folds > 1 else 0):
        StageCheckpoint(cfg.work_dir / f"fold{i}", "stage1").clear()
    return bundle


def _save_checkpoint(
    cfg: TrainConfig,
    log: Logger,
    segmenter: torch.nn.Module,
    classifier: torch.nn.Module,
    counts: tuple[int, int],
    start: float,
) -> Path:
    """Close the log (wall time) and save both stages' weights as ``checkpoint.pt``."""
    log.data["wall_seconds"] = round(time.monotonic() - start, 1)
    log.save()
    checkpoint = cfg.work_dir / "checkpoint.pt"
    state = {
        "segmenter": segmenter.state_dict(),
        "classifier": classifier.state_dict(),
        "counts": {"train": counts[0], "val": counts[1]},
    }
    torch.save(state, checkpoint)
    return checkpoint


def load_checkpoint(cfg: TrainConfig, checkpoint: Path) -> tuple[FameNodeNet, dict[str, int]]:
    """The combined eager model saved by `run`, built with `cfg`'s architecture settings."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)

    def mau_net() -> MAUNet:
        return MAUNet(
            base_width=cfg.base_width,
            channel_attention=cfg.channel_attention,
            spatial_attention=cfg.spatial_attention,
        )

    segmenter: MAUNet | FoldEnsemble = (
        FoldEnsemble([mau_net() for _ in range(cfg.folds)]) if cfg.folds > 1 else mau_net()
    )
    segmenter.load_state_dict(state["segmenter"])
    classifier = classifier_for(cfg)
    classifier.load_state_dict(state["classifier"])
    return FameNodeNet(segmenter, classifier).eval(), dict(state["counts"])


SEGMENTER_FILE = "segmenter.pt"


def _architecture(cfg: TrainConfig) -> dict[str, Any]:
    """The settings a saved segmenter must share with the classifier stage trained on it."""
    return {
        "size": cfg.size,
        "base_width": cfg.base_width,
        "channel_attention": cfg.channel_attention,
        "spatial_attention": cfg.spatial_attention,
        "folds": cfg.folds,
        "manifests": [sha256_of(m) for m in cfg.manifests],
    }


def sha256_of(path: Path) -> str:
    from appliance.bundle import sha256_file

    return sha256_file(path)


def _segmenter_model(cfg: TrainConfig) -> MAUNet | FoldEnsemble:
    def mau_net() -> MAUNet:
        return MAUNet(
            base_width=cfg.base_width,
            channel_attention=cfg.channel_attention,
            spatial_attention=cfg.spatial_attention,
        )

    return FoldEnsemble([mau_net() for _ in range(cfg.folds)]) if cfg.folds > 1 else mau_net()


def load_train_val(cfg: TrainConfig) -> tuple[ArraySet, ArraySet]:
    """The train and val splits of every manifest of `cfg`; exits unless both have rows."""
    data = load_datasets(cfg.manifests, cfg.preprocess_params(), cfg.cache_dir)
    train, val = data["train"], data["val"]
    if not len(train) or not len(val):
        raise SystemExit(f"{cfg.manifest}: need train and val rows, got {len(train)}, {len(val)}")
    return train, val


def _train_val(cfg: TrainConfig) -> tuple[ArraySet, ArraySet]:
    train, val = load_train_val(cfg)
    print(f"data: train {len(train)} {train.class_counts()}, val {len(val)}", flush=True)
    return train, val


def run_segmenter(cfg: TrainConfig) -> Path:
    """Stage 1 alone (``fame-node train seg``): the best-epoch MAU-Net (or fold ensemble)
    saved as ``<work_dir>/segmenter.pt`` with its architecture and val threshold, next to
    ``training_log.json``; resumable like `run`. Returns the segmenter file."""
    start = time.monotonic()
    gen = seed_everything(cfg.seed, threads=cfg.threads)
    train, val = _train_val(cfg)
    log = Logger(cfg.work_dir / "training_log.json", cfg)
    segmenter: MAUNet | FoldEnsemble
    if cfg.folds > 1:
        from trainer.fold_training import train_fold_ensemble

        segmenter, summary = train_fold_ensemble(cfg, train, val, log)
    else:
        segmenter, summary = train_segmenter(cfg, train, val, gen, log)
    path = cfg.work_dir / SEGMENTER_FILE
    torch.save(
        {
            "segmenter": segmenter.state_dict(),
            "architecture": json.dumps(_architecture(cfg)),
            "threshold": float(summary.get("threshold", 0.5)),
        },
        path,
    )
    log.data["wall_seconds"] = round(time.monotonic() - start, 1)
    log.save()
    StageCheckpoint(cfg.work_dir, "stage1").clear()
    for i in range(cfg.folds if cfg.folds > 1 else 0):
        StageCheckpoint(cfg.work_dir / f"fold{i}", "stage1").clear()
    return path


def run_classifier(cfg: TrainConfig, segmenter_dir: Path) -> Path:
    """Stage 2 alone (``fame-node train cls``) on the frozen segmenter of a `run_segmenter`
    folder; writes ``<work_dir>/checkpoint.pt`` (both models, what `export_checkpoint`
    reads) and ``training_log.json`` (stage 1's records copied in). Returns the checkpoint.

    Raises SystemExit when the segmenter folder is missing or was trained with another
    architecture, size or data than `cfg`.
    """
    start = time.monotonic()
    seg_file = segmenter_dir / SEGMENTER_FILE
    if not seg_file.is_file():
        raise SystemExit(
            f"{segmenter_dir}: no {SEGMENTER_FILE}; train the segmenter first "
            "(fame-node train seg --out DIR, or python -m trainer.train --stage seg)"
        )
    saved = torch.load(seg_file, map_location="cpu", weights_only=True)
    theirs, ours = json.loads(saved["architecture"]), _architecture(cfg)
    differ = sorted(k for k in ours if theirs.get(k) != ours[k])
    if differ:
        raise SystemExit(
            f"{seg_file} was trained with other {', '.join(differ)} ({theirs}) than this run "
            f"({ours}): pass the same --manifest / --size / --base-width / --folds as its run"
        )
    gen = seed_everything(cfg.seed, threads=cfg.threads)
    segmenter = _segmenter_model(cfg)
    segmenter.load_state_dict(saved["segmenter"])
    train, val = _train_val(cfg)
    seg_sha = sha256_of(seg_file)
    marker = cfg.work_dir / "stage2.segmenter.sha256"
    if marker.is_file() and marker.read_text().strip() != seg_sha:
        print(f"[stage2] not resuming: {cfg.work_dir} was on another segmenter", flush=True)
        StageCheckpoint(cfg.work_dir, "stage2").clear()
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(seg_sha + "\n")
    log = Logger(cfg.work_dir / "training_log.json", cfg)
    seg_log = json.loads((segmenter_dir / "training_log.json").read_text(encoding="utf-8"))
    for key in ("stage1", "stage1_summary"):
        log.data[key] = seg_log[key]
    log.data["segmenter"] = {"file": str(seg_file), "sha256": seg_sha}
    classifier, _ = train_any_classifier(
        cfg, segmenter, train, val, gen, log, deadline=start + 60.0 * cfg.max_minutes
    )
    checkpoint = _save_checkpoint(cfg, log, segmenter, classifier, (len(train), len(val)), start)
    StageCheckpoint(cfg.work_dir, "stage2").clear()
    StageCheckpoint(cfg.work_dir, STAGE_TWO).clear()
    marker.unlink()
    return checkpoint


def export_checkpoint(cfg: TrainConfig, checkpoint: Path, log_path: Path) -> Path:
    """Export the checkpoint's `FameNodeNet` as the bundle ``cfg.out``: the mask threshold
    chosen on val here, the OOD head (train) and temperature (val) by the shared
    `exporters.fame_bundle.export_fame_bundle`, which the federation's deployment uses too."""
    from appliance.bundle import sha256_file
    from exporters.fame_bundle import BundleIdentity, export_fame_bundle

    torch.set_num_threads(cfg.threads)
    net, counts = load_checkpoint(cfg, checkpoint)
    log = json.loads(log_path.read_text(encoding="utf-8"))
    seg, cls = log["stage1_summary"], log["stage2_summary"]
    data = load_datasets(cfg.manifests, cfg.preprocess_params(), cfg.cache_dir)
    val = data["val"]
    figures = validate(net, val, cfg.min_lesion_area_px)
    log["busi_val"] = figures
    log_path.write_text(json.dumps(log, indent=1), encoding="utf-8")
    print(f"val: {json.dumps({k: v for k, v in figures.items() if k != 'confusion'})}")
    evaluation = evaluation_record(figures)
    bundle = export_fame_bundle(
        net,
        cfg.out,
        identity=BundleIdentity(
            name=cfg.bundle_name,
            version=cfg.bundle_version,
            preprocessing=cfg.preprocess_params().to_dict(),
            mask_threshold=figures["mask_threshold"],
            min_lesion_area_px=cfg.min_lesion_area_px,
        ),
        train=data["train"],
        val=val,
        work_dir=cfg.work_dir,
        training={
            "data": (
                f"train split ({counts['train']} images) of "
                f"{', '.join(manifest_label(m) for m in cfg.manifests)}; val split "
                f"({counts['val']}) for selection"
            ),
            # The exact data: each manifest names its files and their split.
            "manifests": {manifest_label(m): sha256_file(m) for m in cfg.manifests},
            "dataset_citation": "; ".join(
                DATASET_CITATIONS.get(m.parent.name, m.parent.name) for m in cfg.manifests
            ),
            "architecture": {
                "segmenter": f"MAU-Net, base width {cfg.base_width}, GroupNorm"
                + (
                    f"; {cfg.folds}-fold cross-validation ensemble (mean map)"
                    if cfg.folds > 1
                    else ""
                ),
                "classifier": describe(cfg),
            },
            "stage1": {
                "loss": "soft Dice + BCE"
                + (
                    f" + {cfg.presence_weight} x lesion presence (top 0.5 % of logits)"
                    if cfg.presence_weight > 0
                    else ""
                ),
                "optimizer": _optimizer_text(cfg, cfg.lr_seg),
                "batch_size": cfg.batch_size,
                **(
                    {"lesion_free_images_drawn": f"{cfg.normal_repeat} times an epoch"}
                    if cfg.normal_repeat > 1
                    else {}
                ),
                "epochs_run": seg["epochs_run"],
                "best_epoch": seg["best_epoch"],
                "seconds": seg["seconds"],
            },
            "stage2": {
                "loss": f"class-weighted cross-entropy, label smoothing {cfg.label_smoothing}",
                "optimizer": _optimizer_text(cfg, cfg.lr_cls),
                "batch_size": cfg.batch_size,
                "epochs_run": cls["epochs_run"],
                "best_epoch": cls["best_epoch"],
                "seconds": cls["seconds"],
                # ACGAN images added per class and epoch (None: trained without them).
                "synthetic": cls.get("synthetic"),
            },
            "wall_seconds": log.get("wall_seconds"),
            "seed": cfg.seed,
            "torch": torch.__version__,
            "machine": f"{platform.machine()} CPU, {cfg.threads} threads",
            "augmentation": cfg.augment.describe(),
            "dp": None,
            "rounds": 0,
            # trainer.distill: the teacher bundle and the soft terms (absent: no teacher).
            **({"distilled_from": log["distilled_from"]} if "distilled_from" in log else {}),
        },
        evaluation={"busi_val" if len(cfg.manifests) == 1 else "val": evaluation},
        extra_files={"training_log.json": log_path},
    )
    print(f"calibration: {_calibration_of(bundle)}", flush=True)
    return bundle


def evaluation_record(figures: dict[str, Any]) -> dict[str, Any]:
    """The manifest's record of `validate`'s figures on the val split."""
    evaluation: dict[str, Any] = {
        key: round(float(figures[key]), 4)
        for key in ("dice", "iou", "accuracy", "macro_f1", "macro_auc")
    }
    evaluation.update(
        n=figures["n"],
        fp_rate_normal=round(figures["fp_rate_normal"], 4),
        note=(
            "eager model on the val split at the network's 128x128 grid, after thresholding "
            "and removing components under min_lesion_area_px; Dice / IoU are means over "
            "images with a lesion; the mask threshold was chosen on this split"
        ),
        confusion=figures["confusion"],
    )
    return evaluation


def _optimizer_text(cfg: TrainConfig, lr: float) -> str:
    """The optimiser and schedule of a stage as the bundle manifest records it."""
    if cfg.schedule == "paper":
        return (
            f"Adam lr {lr} L2 {cfg.weight_decay}, ReduceLROnPlateau factor "
            f"{PAPER_PLATEAU_FACTOR} patience {PAPER_PLATEAU_PATIENCE}, early stopping "
            f"patience {PAPER_EARLY_STOP_PATIENCE} (FAME)"
        )
    return f"AdamW lr {lr} wd {cfg.weight_decay}, warmup + cosine"


def _calibration_of(bundle: Path) -> Any:
    from appliance.bundle import load_bundle

    return load_bundle(bundle).manifest.training["calibration"]


def main(argv: list[str] | None = None) -> int:
    cfg, a = parse(argv)
    checkpoint = a.from_checkpoint
    if a.stage == "seg":
        print(f"segmenter written: {run_segmenter(cfg)}", flush=True)
        return 0
    if a.stage == "cls":
        if a.segmenter is None:
            raise SystemExit("--stage cls needs --segmenter DIR (the folder of a --stage seg run)")
        saved = run_classifier(cfg, a.segmenter)
        print(f"checkpoint written: {saved}; export it with --from-checkpoint {saved}")
        return 0
    if checkpoint is not None:
        bundle = export_checkpoint(cfg, checkpoint, checkpoint.parent / "training_log.json")
    else:
        bundle = run(cfg)
    print(f"bundle written and verified: {bundle}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
