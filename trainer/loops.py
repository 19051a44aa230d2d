"""Training loops of the default models: stage 1 (MAU-Net) and stage 2 (the classifier on
the frozen segmenter's lesion map), their validation, and the settings of a run.

Two schedules (`TrainConfig.schedule`): ``default``, AdamW with warmup and cosine decay over
fixed epochs (the shipped bundle), and ``paper``, FAME's Adam 1e-4 / L2 1e-5 with
ReduceLROnPlateau and early stopping (`paper_schedule`). Either resumes exactly from the
per-epoch stage checkpoint. With `TrainConfig.acgan`, stage 2 adds synthetic images of the
minority classes to each epoch (`trainer.synthetic.SyntheticImages`). A progress bar shows
on a terminal only.
The settings and the schedules themselves are `trainer.run_config`'s. With a `teacher`
(`trainer.teacher`) each stage adds the teacher's soft terms on the same augmented batch.

`trainer.train` runs them from the command line and exports the result as a bundle.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor, nn

from appliance.postprocess import clean_mask
from trainer.data import ArraySet, augment_batch
from trainer.device import describe as describe_device
from trainer.device import model_device, resolve, restore_rng, rng_state, to
from trainer.losses import dice_bce_loss, inverse_frequency_weights
from trainer.metrics import classification_report, segmentation_summary
from trainer.models import (
    CLASSES,
    FameNodeNet,
    FoldEnsemble,
    LesionClassifier,
    MAUNet,
)
from trainer.progress import EpochProgress
from trainer.resume import StageCheckpoint, last_epoch
from trainer.run_config import PAPER_EARLY_STOP_PATIENCE, TrainConfig, _Schedule
from trainer.synthetic import SyntheticImages
from trainer.teacher import Teacher

THRESHOLDS = tuple(round(0.3 + 0.05 * i, 2) for i in range(9))  # 0.3 .. 0.7


# --------------------------------------------------------------------------- metrics


def segmentation_metrics(
    prob: NDArray[np.float32], masks: NDArray[np.uint8], threshold: float, min_area_px: float
) -> dict[str, float]:
    """Dice / IoU on the network grid after the node's own postprocessing (`clean_mask`).

    ``dice`` and ``iou`` are means over images with a lesion (`trainer.metrics`);
    ``fp_rate_normal`` is the share of lesion-free images given a lesion and
    ``fp_area_normal`` the mean predicted area fraction on them.
    """
    preds = [clean_mask(p, threshold, min_area_px)[0] for p in prob]
    summary = segmentation_summary(preds, list(masks))
    empty = [p.mean() for p, m in zip(preds, masks, strict=True) if not m.any()]
    nan = float("nan")
    return {
        "dice": nan if summary.dice_lesion is None else summary.dice_lesion,
        "iou": nan if summary.iou_lesion is None else summary.iou_lesion,
        "fp_rate_normal": nan
        if summary.false_positive_rate_normal is None
        else summary.false_positive_rate_normal,
        "fp_area_normal": float(np.mean(empty)) if empty else nan,
    }


def choose_threshold(
    prob: NDArray[np.float32], masks: NDArray[np.uint8], min_area_px: float
) -> tuple[float, dict[float, dict[str, float]]]:
    """The threshold in `THRESHOLDS` with the best Dice (ties: the lower), and the sweep."""
    sweep = {t: segmentation_metrics(prob, masks, t, min_area_px) for t in THRESHOLDS}
    return max(THRESHOLDS, key=lambda t: sweep[t]["dice"]), sweep


def classification_metrics(probs: NDArray[np.float32], labels: NDArray[np.int64]) -> dict[str, Any]:
    """Accuracy, macro-F1, macro one-vs-rest AUC, per-class F1 and the confusion matrix."""
    report = classification_report(list(labels), probs, CLASSES)
    nan = float("nan")
    return {
        "accuracy": report.accuracy,
        "macro_f1": report.macro_f1,
        "macro_auc": nan if report.macro_auc is None else report.macro_auc,
        "f1_per_class": {c: v["f1"] for c, v in report.per_class.items()},
        "confusion": report.confusion,
    }


# --------------------------------------------------------------------------- loops


def stage1_pool(masks: NDArray[np.uint8], normal_repeat: int) -> Tensor:
    """The training-image indices of one stage-1 epoch: every image once, and each
    lesion-free one `normal_repeat` times in all (1: each once, the shipped recipe)."""
    if normal_repeat < 1:
        raise ValueError(f"normal_repeat must be 1 or more, got {normal_repeat}")
    every = torch.arange(len(masks))
    if normal_repeat == 1:
        return every
    empty = np.flatnonzero(~masks.reshape(len(masks), -1).any(axis=1))
    return torch.cat([every, torch.from_numpy(empty).repeat(normal_repeat - 1)])


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


@torch.no_grad()
def predict(model: nn.Module, inputs: Tensor, batch_size: int = 32) -> Tensor:
    """Eval-mode forward over `inputs` in batches (the model's single output), on the
    model's device; the result on the CPU."""
    model.eval()
    dev = model_device(model)
    return torch.cat(
        [
            model(to(inputs[i : i + batch_size], dev)).cpu()
            for i in range(0, len(inputs), batch_size)
        ]
    )


class Logger:
    """Per-epoch records to stdout and a JSON file (rewritten after every epoch)."""

    def __init__(self, path: Path, config: TrainConfig) -> None:
        self.path = path
        self.data: dict[str, Any] = {
            "config": json.loads(json.dumps(asdict(config), default=str)),
            "stage1": [],
            "stage2": [],
        }

    def epoch_done(
        self,
        stage: str,
        epoch: int,
        *,
        loss: float,
        lr: float,
        val: dict[str, Any],
        seconds: float,
    ) -> None:
        """Record one finished epoch: its training loss, learning rate and val metrics."""
        self.epoch(
            stage,
            {
                "epoch": epoch,
                "loss": loss,
                "lr": lr,
                **{f"val_{k}": v for k, v in val.items()},
                "seconds": round(seconds, 1),
            },
        )

    def epoch(self, stage: str, record: dict[str, Any]) -> None:
        self.data[stage].append(record)
        text = " ".join(
            f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
            for k, v in record.items()
            if not isinstance(v, dict | list)
        )
        print(f"[{stage}] {text}", flush=True)
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=1), encoding="utf-8")


def train_segmenter(
    cfg: TrainConfig,
    train: ArraySet,
    val: ArraySet,
    gen: torch.Generator,
    log: Logger,
    teacher: Teacher | None = None,
) -> tuple[MAUNet, dict[str, Any]]:
    """Stage 1. Returns the best-epoch MAU-Net and a summary (epochs, threshold, metrics)."""
    start = time.monotonic()
    deadline = start + 60.0 * cfg.max_minutes * cfg.seg_share
    dev = resolve(cfg.device)
    model = MAUNet(
        base_width=cfg.base_width,
        channel_attention=cfg.channel_attention,
        spatial_attention=cfg.spatial_attention,
    ).to(dev)
    if teacher is not None:
        teacher.to(dev)
    x = torch.from_numpy(np.stack([train.images, train.masks.astype(np.float32)], axis=1))
    val_x = torch.from_numpy(val.images[:, None])
    pool = stage1_pool(train.masks, cfg.normal_repeat)
    steps = math.ceil(len(pool) / cfg.batch_size)
    schedule = _Schedule(cfg, model, cfg.lr_seg, steps, cfg.epochs_seg)
    opt, sched = schedule.opt, schedule.sched
    best: dict[str, Any] = {"dice": -1.0}
    best_state: dict[str, Tensor] = {}
    epochs_run = 0
    ckpt = StageCheckpoint(cfg.work_dir, "stage1")
    saved = ckpt.load() if cfg.resume else None
    if saved is not None and saved.get("fingerprint") != cfg.fingerprint():
        print(f"[stage1] not resuming: {ckpt.path} is from other settings", flush=True)
        saved = None
    if saved is not None:
        epochs_run, best, best_state = _restore(saved, model, opt, sched, gen, log, "stage1")
        start -= saved["seconds"]
        deadline -= saved["seconds"]
    early = schedule.early_stop(epochs_run, best.get("epoch", 0))
    last = last_epoch(saved, cfg.epochs_seg, early, deadline, log.data.get("stage1", []))
    for epoch in range(epochs_run + 1, last + 1):
        t0 = time.monotonic()
        model.train()
        total = 0.0
        bar = EpochProgress("stage1", epoch, cfg.epochs_seg, steps)
        for drawn in _batches(len(pool), cfg.batch_size, gen):
            idx = pool[drawn]
            batch = augment_batch(x[idx], gen, cfg.augment, intensity_channels=1, mask_channels=1)
            batch = to(batch, dev)
            logits = model(batch[:, :1])
            loss = dice_bce_loss(logits, batch[:, 1:], presence_weight=cfg.presence_weight)
            loss = loss if teacher is None else loss + teacher.segmentation_term(logits, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            schedule.after_batch()
            total += loss.item() * len(idx)
            bar.update(loss.item(), len(idx))
        bar.close()
        prob = torch.sigmoid(predict(model, val_x)).numpy()[:, 0]
        metrics = segmentation_metrics(prob, val.masks, 0.5, cfg.min_lesion_area_px)
        epochs_run = epoch
        seconds = time.monotonic() - t0
        log.epoch_done(
            "stage1",
            epoch,
            loss=total / len(pool),
            lr=schedule.lr,
            val=metrics,
            seconds=seconds,
        )
        if metrics["dice"] > best["dice"]:
            best = {"epoch": epoch, **metrics}
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        schedule.after_epoch(metrics["dice"])
        early = schedule.early_stop(epoch, best.get("epoch", 0))
        stop = early or time.monotonic() + seconds > deadline
        snap = _snapshot(epoch, best, best_state, model, opt, sched, gen, log, start)
        ckpt.save({**snap, "fingerprint": cfg.fingerprint(), "done": stop})
        if stop:
            why = (
                f"no better val Dice in {PAPER_EARLY_STOP_PATIENCE} epochs"
                if early
                else ("--max-minutes budget")
            )
            print(f"[stage1] stopping after epoch {epoch}: {why}", flush=True)
            break
    model.load_state_dict(best_state)
    model.cpu()
    if teacher is not None:
        teacher.to(torch.device("cpu"))
    prob = torch.sigmoid(predict(model, val_x)).numpy()[:, 0]
    threshold, sweep = choose_threshold(prob, val.masks, cfg.min_lesion_area_px)
    summary = {
        "epochs_run": epochs_run,
        "best_epoch": best["epoch"],
        "seconds": round(time.monotonic() - start, 1),
        "device": describe_device(dev),
        "threshold": threshold,
        "val_at_threshold": sweep[threshold],
        "threshold_sweep": {str(t): round(m["dice"], 4) for t, m in sweep.items()},
    }
    log.data["stage1_summary"] = summary
    log.save()
    return model, summary


def train_classifier(
    cfg: TrainConfig,
    segmenter: MAUNet | FoldEnsemble,
    train: ArraySet,
    val: ArraySet,
    gen: torch.Generator,
    log: Logger,
    deadline: float,
    teacher: Teacher | None = None,
) -> tuple[LesionClassifier, dict[str, Any]]:
    """Stage 2 with the segmenter frozen. Returns the best-epoch classifier and a summary."""
    start = time.monotonic()
    segmenter.eval().requires_grad_(False)

    def with_lesion_map(images: NDArray[np.float32]) -> Tensor:
        # The frozen segmenter's map is computed once per image, not per augmented copy: the
        # geometric augmentation is applied to image and map together afterwards.
        img = torch.from_numpy(images[:, None])
        return torch.cat([img, torch.sigmoid(predict(segmenter, img))], dim=1)

    x, val_x = with_lesion_map(train.images), with_lesion_map(val.images)
    x = x if teacher is None else torch.cat([x, teacher.lesion_maps(x[:, :1])], dim=1)
    y = torch.from_numpy(train.labels)
    dev = resolve(cfg.device)
    model = LesionClassifier(in_channels=2, widths=cfg.cls_widths, dropout=cfg.dropout).to(dev)
    if teacher is not None:
        teacher.to(dev)
    weights = inverse_frequency_weights(train.class_counts())
    synthetic = SyntheticImages.load(cfg, train, with_lesion_map)
    steps = math.ceil((len(train) + synthetic.total) / cfg.batch_size)
    schedule = _Schedule(cfg, model, cfg.lr_cls, steps, cfg.epochs_cls)
    opt, sched = schedule.opt, schedule.sched
    best: dict[str, Any] = {"key": (-1.0, -1.0)}
    best_state: dict[str, Tensor] = {}
    epochs_run = 0
    ckpt = StageCheckpoint(cfg.work_dir, "stage2")
    saved = ckpt.load() if cfg.resume else None
    if saved is not None and saved.get("fingerprint") != cfg.fingerprint():
        print(f"[stage2] not resuming: {ckpt.path} is from other settings", flush=True)
        saved = None
    if saved is not None:
        epochs_run, best, best_state = _restore(saved, model, opt, sched, gen, log, "stage2")
        best["key"] = tuple(best["key"])
        start -= saved["seconds"]
        deadline -= saved["seconds"]
    early = schedule.early_stop(epochs_run, best.get("epoch", 0))
    last = last_epoch(saved, cfg.epochs_cls, early, deadline, log.data.get("stage2", []))
    for epoch in range(epochs_run + 1, last + 1):
        t0 = time.monotonic()
        model.train()
        total = 0.0
        # Without an ACGAN this is the real train set and its weights, unchanged.
        ex, ey = synthetic.epoch(epoch, x, y)
        if synthetic.total:  # balanced by the synthetic images: equal weights
            weights = inverse_frequency_weights(torch.bincount(ey, minlength=3).tolist())
        bar = EpochProgress("stage2", epoch, cfg.epochs_cls, steps)
        w = to(weights, dev)  # once per epoch, not per batch
        for idx in _batches(len(ex), cfg.batch_size, gen):
            batch = to(augment_batch(ex[idx], gen, cfg.augment, intensity_channels=1), dev)
            logits = model(batch[:, :2])  # [image, lesion map]; a teacher's map is channel 2
            loss = F.cross_entropy(
                logits,
                to(ey[idx], dev),
                weight=w,
                label_smoothing=cfg.label_smoothing,
            )
            loss = loss if teacher is None else loss + teacher.classification_term(logits, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            schedule.after_batch()
            total += loss.item() * len(idx)
            bar.update(loss.item(), len(idx))
        bar.close()
        probs = torch.softmax(predict(model, val_x), dim=1).numpy()
        metrics = classification_metrics(probs, val.labels)
        epochs_run = epoch
        seconds = time.monotonic() - t0
        log.epoch_done(
            "stage2",
            epoch,
            loss=total / len(ex),
            lr=schedule.lr,
            val=metrics,
            seconds=seconds,
        )
        key = (round(metrics["macro_f1"], 6), metrics["macro_auc"])
        if key > best["key"]:
            best = {"key": key, "epoch": epoch, **metrics}
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        schedule.after_epoch(metrics["macro_f1"])
        early = schedule.early_stop(epoch, best.get("epoch", 0))
        stop = early or time.monotonic() + seconds > deadline
        snap = _snapshot(epoch, best, best_state, model, opt, sched, gen, log, start)
        ckpt.save({**snap, "fingerprint": cfg.fingerprint(), "done": stop})
        if stop:
            why = (
                f"no better val macro-F1 in {PAPER_EARLY_STOP_PATIENCE} epochs"
                if early
                else ("--max-minutes budget")
            )
            print(f"[stage2] stopping after epoch {epoch}: {why}", flush=True)
            break
    model.load_state_dict(best_state)
    model.cpu()
    if teacher is not None:
        teacher.to(torch.device("cpu"))
    summary = {
        "epochs_run": epochs_run,
        "best_epoch": best["epoch"],
        "seconds": round(time.monotonic() - start, 1),
        "device": describe_device(dev),
        "class_weights": [round(float(w), 4) for w in weights],
        "schedule": cfg.schedule,
        "synthetic": synthetic.describe(),
    }
    log.data["stage2_summary"] = summary
    log.save()
    return model, summary


def _snapshot(
    epoch: int,
    best: dict[str, Any],
    best_state: dict[str, Tensor],
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    gen: torch.Generator,
    log: Logger,
    start: float,
) -> dict[str, Any]:
    """What `_restore` needs to continue after `epoch` exactly as if never stopped."""
    return {
        "epoch": epoch,
        # JSON keeps the best-epoch metrics plain data (weights_only loading).
        "best": json.dumps(best, default=float),
        "best_state": best_state,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "generator": gen.get_state(),
        # dropout draws from the global generator (and the GPU's, when training there)
        **rng_state(model_device(model)),
        "log": json.dumps(log.data),
        "seconds": time.monotonic() - start,
    }


def _restore(
    saved: dict[str, Any],
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    gen: torch.Generator,
    log: Logger,
    stage: str,
) -> tuple[int, dict[str, Any], dict[str, Tensor]]:
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    sched.load_state_dict(saved["scheduler"])
    gen.set_state(saved["generator"])
    restore_rng(saved, model_device(model))
    previous = json.loads(saved["log"])
    for key in ("stage1", "stage2", "stage1_summary"):
        if key in previous:
            log.data[key] = previous[key]
    epoch = int(saved["epoch"])
    print(f"[{stage}] resuming after epoch {epoch} ({saved['seconds']:.0f} s spent)", flush=True)
    return epoch, json.loads(saved["best"]), dict(saved["best_state"])


def validate(net: FameNodeNet, val: ArraySet, min_area_px: float) -> dict[str, Any]:
    """Figures of the combined eager model on the validation split.

    The mask threshold is chosen here, on `val` (never on test), with the node's own
    postprocessing; the segmentation figures are reported at that threshold.
    """
    net.eval()
    images = torch.from_numpy(val.images[:, None])
    probs_seg, probs_cls = [], []
    with torch.no_grad():
        for i in range(0, len(images), 32):
            lesion, cls = net(images[i : i + 32])
            probs_seg.append(lesion[:, 0].numpy())
            probs_cls.append(cls.numpy())
    threshold, sweep = choose_threshold(np.concatenate(probs_seg), val.masks, min_area_px)
    return {
        "n": len(val),
        "mask_threshold": threshold,
        "threshold_sweep_dice": {str(t): round(m["dice"], 4) for t, m in sweep.items()},
        **sweep[threshold],
        **classification_metrics(np.concatenate(probs_cls), val.labels),
    }


# --------------------------------------------------------------------------- run and export
