"""Stage 1 as the FAME paper's K-fold cross-validation ensemble (``--folds K``).

The training split is cut into K folds by group / patient (`trainer.folds`); fold model i
is `trainer.loops.train_segmenter` on the other K-1 folds, keeping the epoch with the best
Dice on fold i (its held-out fold; `trainer.folds` says why not val). Each fold has its own
work folder (``<work-dir>/fold<i>/``) with its own per-epoch resume checkpoint and log, so
an interrupted run resumes inside the fold it was in, and a finished fold is not retrained.

The result is a `FoldEnsemble` of the K best-epoch models, and a summary with, on the val
split (which no fold selected on): each fold's Dice and the ensemble's Dice (each at its
own best threshold of `trainer.loops.THRESHOLDS`), and the Spearman correlation between the
ensemble's per-image uncertainty and its per-image Dice error (1 - Dice) on val images with
a lesion. The caller (`trainer.train.run`) trains the classifier on the ensemble's maps.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from appliance.evaluate import spearman
from appliance.postprocess import clean_mask
from trainer.data import ArraySet
from trainer.folds import assign_folds, fold_masks, group_keys, subset
from trainer.loops import Logger, choose_threshold, predict, train_segmenter
from trainer.metrics import dice
from trainer.models import FoldEnsemble, MAUNet
from trainer.run_config import TrainConfig


def train_fold_ensemble(
    cfg: TrainConfig, train: ArraySet, val: ArraySet, log: Logger
) -> tuple[FoldEnsemble, dict[str, Any]]:
    """Train ``cfg.folds`` fold MAU-Nets; the ensemble and its summary (also in `log`).

    Raises `trainer.folds.FoldError` where the training split has fewer groups than folds.
    """
    start = time.monotonic()
    k = cfg.folds
    keys = group_keys(cfg.manifests, train)
    folds = assign_folds(keys, train.labels, k, cfg.seed)
    members: list[MAUNet] = []
    per_fold: list[dict[str, Any]] = []
    for i, (fit_rows, held_rows) in enumerate(fold_masks(folds, k)):
        fold_cfg = dataclasses.replace(
            cfg, work_dir=cfg.work_dir / f"fold{i}", max_minutes=cfg.max_minutes / k
        )
        fit, held = subset(train, fit_rows), subset(train, held_rows)
        print(
            f"[fold {i + 1}/{k}] training on {len(fit)} images, selecting on its held-out "
            f"{len(held)} {held.class_counts()} ({len(set(np.asarray(keys)[held_rows]))} groups)",
            flush=True,
        )
        # Each fold from its own seed: a fold started after a resume draws what it would have.
        torch.manual_seed(cfg.seed + 1 + i)
        gen = torch.Generator().manual_seed(cfg.seed + 1 + i)
        model, summary = train_segmenter(
            fold_cfg, fit, held, gen, Logger(fold_cfg.work_dir / "training_log.json", fold_cfg)
        )
        members.append(model.eval())
        per_fold.append(
            {
                "fold": i,
                "train_images": len(fit),
                "held_out_images": len(held),
                "epochs_run": summary["epochs_run"],
                "best_epoch": summary["best_epoch"],
                "held_out_dice": round(float(summary["val_at_threshold"]["dice"]), 4),
                "seconds": summary["seconds"],
            }
        )
    ensemble = FoldEnsemble(members).eval()
    figures = ensemble_figures(ensemble, val, cfg.min_lesion_area_px)
    for record, fold_dice in zip(per_fold, figures.pop("fold_val_dice"), strict=True):
        record["val_dice"] = fold_dice
    summary = {
        "folds": k,
        "fold_assignment": "by group (BUSI) / patient (BUS-BRA) / row, stratified by class",
        "selection": "each fold's epoch on its own held-out fold; val untouched by them",
        "per_fold": per_fold,
        **figures,
        # What export_checkpoint reports of stage 1, one entry per fold.
        "epochs_run": [f["epochs_run"] for f in per_fold],
        "best_epoch": [f["best_epoch"] for f in per_fold],
        "seconds": round(time.monotonic() - start, 1),
    }
    log.data["stage1_summary"] = summary
    log.save()
    print(f"[folds] {summary}", flush=True)
    return ensemble, summary


def ensemble_figures(ensemble: FoldEnsemble, val: ArraySet, min_area_px: float) -> dict[str, Any]:
    """Val Dice of each fold and of the ensemble, and uncertainty vs Dice error."""
    x = torch.from_numpy(np.ascontiguousarray(val.images[:, None]))
    with torch.no_grad():
        probs = torch.cat([ensemble.fold_probs(x[i : i + 32]) for i in range(0, len(x), 32)], 1)
        uncertainty = torch.cat(
            [ensemble.predict(x[i : i + 32])[1] for i in range(0, len(x), 32)]
        ).numpy()
    fold_dice = []
    for p in probs:
        t, sweep = choose_threshold(p[:, 0].numpy(), val.masks, min_area_px)
        fold_dice.append(round(float(sweep[t]["dice"]), 4))
    mean = torch.sigmoid(predict(ensemble, x)).numpy()[:, 0]
    threshold, sweep = choose_threshold(mean, val.masks, min_area_px)
    error = per_image_dice_error(mean, val.masks, threshold, min_area_px)
    lesion = val.masks.reshape(len(val), -1).any(axis=1)
    rho = spearman(list(uncertainty[lesion]), list(error[lesion]))
    return {
        "fold_val_dice": fold_dice,
        "ensemble_val_dice": round(float(sweep[threshold]["dice"]), 4),
        "ensemble_threshold": threshold,
        "val_uncertainty": {
            "median": round(float(np.median(uncertainty)), 4),
            "p90": round(float(np.quantile(uncertainty, 0.9)), 4),
            "spearman_vs_dice_error": None if rho is None else round(rho, 4),
            "n_lesion_images": int(lesion.sum()),
        },
    }


def per_image_dice_error(
    prob: NDArray[np.float32], masks: NDArray[np.uint8], threshold: float, min_area_px: float
) -> NDArray[np.float64]:
    """1 - Dice of each image's mask after the node's postprocessing (`clean_mask`)."""
    return np.array(
        [
            1.0 - dice(clean_mask(p, threshold, min_area_px)[0], m)
            for p, m in zip(prob, masks, strict=True)
        ]
    )


__all__ = ["ensemble_figures", "per_image_dice_error", "train_fold_ensemble"]
