"""Training of the dual-stage ensemble classifier on the frozen MAU-Net's lesion map.

It takes the place of `trainer.loops.train_classifier` when ``TrainConfig.classifier`` is
``"dual-stage"`` (``python -m trainer.train --classifier dual-stage --profile edge``):

- **stage one** (log and checkpoint ``stage2``, `cfg.epochs_cls` epochs): every backbone
  with its own head, on [image, frozen MAU-Net lesion probability] with class-weighted
  cross-entropy (the sum over the backbones; their parameters are disjoint, so under Adam
  this is each backbone trained on its own on the same batches). Each backbone keeps its
  own best epoch by val macro-F1 (ties: macro AUC); the average of the heads' softmax is
  logged too, as the "simply averaging" baseline the paper's stage two improves on.
- **stage two** (``stage2_meta``, `cfg.epochs_meta` epochs): the backbones and heads frozen
  (``requires_grad`` off, not in the optimiser), the meta-classifier trained on the
  concatenated features of augmented batches, selected on val macro-F1 (ties: AUC).

Both stages use the run's optimiser schedule (`cfg.schedule`, `trainer.run_config._Schedule`),
ACGAN images where configured, and a `trainer.resume.StageCheckpoint` after every epoch,
so an interrupted run resumes exactly. The summary written as ``stage2_summary`` has the
keys `trainer.train.export_checkpoint` reads (epochs_run, best_epoch, seconds).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor, nn

from trainer.data import ArraySet, augment_batch
from trainer.device import describe as describe_device
from trainer.device import model_device, resolve, to
from trainer.loops import (
    Logger,
    _batches,
    _restore,
    _snapshot,
    classification_metrics,
    predict,
    train_classifier,
)
from trainer.losses import inverse_frequency_weights
from trainer.models import DualStageClassifier, FoldEnsemble, LesionClassifier, MAUNet
from trainer.profiles import profile
from trainer.progress import EpochProgress
from trainer.resume import StageCheckpoint, last_epoch
from trainer.run_config import PAPER_EARLY_STOP_PATIENCE, TrainConfig, _Schedule
from trainer.synthetic import SyntheticImages

CLASSIFIERS = ("preact-resnet", "dual-stage")
STAGE_ONE, STAGE_TWO = "stage2", "stage2_meta"
STAGE_ONE_SHARE = 0.8  # of the classifier's time budget that stage one may use


def classifier_for(cfg: TrainConfig) -> LesionClassifier | DualStageClassifier:
    """A fresh classifier of `cfg`'s kind, profile and backbones (or ResNet widths)."""
    if cfg.classifier == "dual-stage":
        return DualStageClassifier(profile(cfg.profile), backbones=cfg.backbones)
    if cfg.classifier == "preact-resnet":
        return LesionClassifier(in_channels=2, widths=cfg.cls_widths, dropout=cfg.dropout)
    raise ValueError(f"classifier {cfg.classifier!r}: expected one of {CLASSIFIERS}")


def describe(cfg: TrainConfig) -> str:
    """The classifier in words, for the bundle's ``training.architecture``."""
    if cfg.classifier != "dual-stage":
        return f"pre-activation ResNet, widths {list(cfg.cls_widths)}, input [image, lesion_prob]"
    p = profile(cfg.profile)
    return (
        f"dual-stage ensemble ({cfg.profile} profile) of {', '.join(cfg.backbones)}: a head "
        f"each (dense {p.head_width}, ReLU, dropout {p.dropout}, dense 3), then a "
        f"meta-classifier (dense {p.meta_width}) over the concatenated features; input "
        "[image, lesion_prob]"
    )


def _frozen_inputs(
    segmenter: MAUNet | FoldEnsemble,
) -> Callable[[NDArray[np.float32]], Tensor]:
    """[image, lesion probability] of images through the frozen segmenter: computed once per
    image; the geometric augmentation then moves image and map together."""
    segmenter.eval().requires_grad_(False)

    def with_lesion_map(images: NDArray[np.float32]) -> Tensor:
        img = torch.from_numpy(images[:, None])
        return torch.cat([img, torch.sigmoid(predict(segmenter, img))], dim=1)

    return with_lesion_map


def _key(metrics: dict[str, Any]) -> tuple[float, float]:
    auc = metrics["macro_auc"]
    return (round(metrics["macro_f1"], 6), auc if math.isfinite(auc) else -1.0)


@torch.no_grad()
def stage_one_probs(model: DualStageClassifier, x: Tensor, batch: int = 32) -> list[Tensor]:
    """Each head's softmax over `x`, eval mode, in `backbone_names` order."""
    model.eval()
    dev = model_device(model)
    chunks = [
        [z.cpu() for z in model.stage_one_logits(to(x[i : i + batch], dev))]
        for i in range(0, len(x), batch)
    ]
    return [
        torch.softmax(torch.cat([c[b] for c in chunks]), dim=1) for b in range(len(model.backbones))
    ]


def _start(
    cfg: TrainConfig,
    stage: str,
    module: nn.Module,
    schedule: _Schedule,
    gen: torch.Generator,
    log: Logger,
) -> tuple[StageCheckpoint, dict[str, Any] | None]:
    """The stage's checkpoint and, when resuming, its saved state (already restored into
    `module`, the optimiser, scheduler, generators and the log's records)."""
    ckpt = StageCheckpoint(cfg.work_dir, stage)
    saved = ckpt.load() if cfg.resume else None
    if saved is not None and saved.get("fingerprint") != cfg.fingerprint():
        print(f"[{stage}] not resuming: {ckpt.path} is from other settings", flush=True)
        saved = None
    if saved is not None:
        _restore(saved, module, schedule.opt, schedule.sched, gen, log, stage)
        previous = json.loads(saved["log"])
        for key in (STAGE_ONE, STAGE_TWO, "stage2_stage_one_summary"):
            if key in previous:
                log.data[key] = previous[key]
    return ckpt, saved


def train_any_classifier(
    cfg: TrainConfig,
    segmenter: MAUNet | FoldEnsemble,
    train: ArraySet,
    val: ArraySet,
    gen: torch.Generator,
    log: Logger,
    deadline: float,
) -> tuple[LesionClassifier | DualStageClassifier, dict[str, Any]]:
    """The classifier stage of a run, of `cfg.classifier`'s kind: `train_dual_stage` or
    `trainer.loops.train_classifier` (the pre-activation ResNet)."""
    if cfg.classifier == "dual-stage":
        return train_dual_stage(cfg, segmenter, train, val, gen, log, deadline)
    if cfg.classifier != "preact-resnet":
        raise ValueError(f"classifier {cfg.classifier!r}: expected one of {CLASSIFIERS}")
    return train_classifier(cfg, segmenter, train, val, gen, log, deadline)


def train_dual_stage(
    cfg: TrainConfig,
    segmenter: MAUNet | FoldEnsemble,
    train: ArraySet,
    val: ArraySet,
    gen: torch.Generator,
    log: Logger,
    deadline: float,
) -> tuple[DualStageClassifier, dict[str, Any]]:
    """Both stages with the segmenter frozen; the best classifier and a summary."""
    start = time.monotonic()
    with_map = _frozen_inputs(segmenter)
    x, val_x = with_map(train.images), with_map(val.images)
    y = torch.from_numpy(train.labels)
    model = classifier_for(cfg)
    if not isinstance(model, DualStageClassifier):
        raise ValueError(f"train_dual_stage needs classifier 'dual-stage', got {cfg.classifier}")
    dev = resolve(cfg.device)
    model.to(dev)
    synthetic = SyntheticImages.load(cfg, train, with_map)
    one_deadline = start + STAGE_ONE_SHARE * max(0.0, deadline - start)
    one = _stage_one(cfg, model, x, y, val_x, val, synthetic, gen, log, one_deadline)
    two = _stage_two(cfg, model, x, y, val_x, val, synthetic, gen, log, deadline)
    model.cpu()
    summary = {
        "epochs_run": one["epochs_run"] + two["epochs_run"],
        "best_epoch": two["best_epoch"],
        "seconds": round(time.monotonic() - start, 1),
        "device": describe_device(dev),
        "class_weights": one["class_weights"],
        "schedule": cfg.schedule,
        "synthetic": synthetic.describe(),
        "stage_one": one,
        "stage_two": two,
    }
    log.data["stage2_summary"] = summary
    log.save()
    return model, summary


def _stage_one(
    cfg: TrainConfig,
    model: DualStageClassifier,
    x: Tensor,
    y: Tensor,
    val_x: Tensor,
    val: ArraySet,
    synthetic: SyntheticImages,
    gen: torch.Generator,
    log: Logger,
    deadline: float,
) -> dict[str, Any]:
    """Backbones and heads; each backbone's best epoch composed into the returned model."""
    start = time.monotonic()
    log.data.setdefault(STAGE_ONE, [])
    trained = nn.ModuleList(model.stage_one_modules())
    names = model.backbone_names
    weights = inverse_frequency_weights(train_counts(y))
    steps = math.ceil((len(x) + synthetic.total) / cfg.batch_size)
    schedule = _Schedule(cfg, trained, cfg.lr_cls, steps, cfg.epochs_cls)
    best: dict[str, Any] = {"per_backbone": {n: {"key": [-1.0, -1.0], "epoch": 0} for n in names}}
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ckpt, saved = _start(cfg, STAGE_ONE, trained, schedule, gen, log)
    epochs_run = 0
    if saved is not None:
        epochs_run = int(saved["epoch"])
        best, best_state = json.loads(saved["best"]), dict(saved["best_state"])
        start -= saved["seconds"]
        deadline -= saved["seconds"]
    latest = max(e["epoch"] for e in best["per_backbone"].values())
    early = schedule.early_stop(epochs_run, latest)
    last = last_epoch(saved, cfg.epochs_cls, early, deadline, log.data.get(STAGE_ONE, []))
    for epoch in range(epochs_run + 1, last + 1):
        t0 = time.monotonic()
        model.train()
        ex, ey = synthetic.epoch(epoch, x, y)
        if synthetic.total:
            weights = inverse_frequency_weights(train_counts(ey))
        total = 0.0
        bar = EpochProgress(STAGE_ONE, epoch, cfg.epochs_cls, steps)
        dev = model_device(model)
        w = to(weights, dev)
        for idx in _batches(len(ex), cfg.batch_size, gen):
            batch = to(augment_batch(ex[idx], gen, cfg.augment, intensity_channels=1), dev)
            labels = to(ey[idx], dev)
            loss = torch.stack(
                [
                    F.cross_entropy(z, labels, weight=w, label_smoothing=cfg.label_smoothing)
                    for z in model.stage_one_logits(batch)
                ]
            ).sum()
            schedule.opt.zero_grad(set_to_none=True)
            loss.backward()
            schedule.after_batch()
            total += loss.item() * len(idx)
            bar.update(loss.item(), len(idx))
        bar.close()
        probs = stage_one_probs(model, val_x)
        per = {
            n: classification_metrics(p.numpy(), val.labels)
            for n, p in zip(names, probs, strict=True)
        }
        averaged = classification_metrics(torch.stack(probs).mean(0).numpy(), val.labels)
        seconds = time.monotonic() - t0
        record: dict[str, Any] = {}
        for n, m in per.items():
            record[f"{n}_macro_f1"], record[f"{n}_macro_auc"] = m["macro_f1"], m["macro_auc"]
            entry = best["per_backbone"][n]
            if list(_key(m)) > entry["key"]:
                best["per_backbone"][n] = {"key": list(_key(m)), "epoch": epoch, **_plain(m)}
                i = names.index(n)
                for prefix in (f"backbones.{i}.", f"heads.{i}."):
                    best_state.update(
                        {
                            k: v.detach().clone()
                            for k, v in model.state_dict().items()
                            if k.startswith(prefix)
                        }
                    )
        record.update(
            averaged_macro_f1=averaged["macro_f1"], averaged_macro_auc=averaged["macro_auc"]
        )
        log.epoch_done(
            STAGE_ONE, epoch, loss=total / len(ex), lr=schedule.lr, val=record, seconds=seconds
        )
        epochs_run = epoch
        mean_f1 = float(np.mean([m["macro_f1"] for m in per.values()]))
        schedule.after_epoch(mean_f1)
        latest = max(e["epoch"] for e in best["per_backbone"].values())
        early = schedule.early_stop(epoch, latest)
        stop = early or time.monotonic() + seconds > deadline
        snap = _snapshot(
            epoch, best, best_state, trained, schedule.opt, schedule.sched, gen, log, start
        )
        ckpt.save({**snap, "fingerprint": cfg.fingerprint(), "done": stop})
        if stop:
            why = (
                f"no better val macro-F1 in {PAPER_EARLY_STOP_PATIENCE} epochs"
                if early
                else "time budget"
            )
            print(f"[{STAGE_ONE}] stopping after epoch {epoch}: {why}", flush=True)
            break
    model.load_state_dict(best_state)
    return {
        "epochs_run": epochs_run,
        "best_epoch": {n: e["epoch"] for n, e in best["per_backbone"].items()},
        "val": {
            n: {k: e[k] for k in ("macro_f1", "macro_auc", "accuracy") if k in e}
            for n, e in best["per_backbone"].items()
        },
        "seconds": round(time.monotonic() - start, 1),
        "class_weights": [round(float(w), 4) for w in weights],
    }


def _stage_two(
    cfg: TrainConfig,
    model: DualStageClassifier,
    x: Tensor,
    y: Tensor,
    val_x: Tensor,
    val: ArraySet,
    synthetic: SyntheticImages,
    gen: torch.Generator,
    log: Logger,
    deadline: float,
) -> dict[str, Any]:
    """The meta-classifier over the frozen backbones' concatenated features."""
    start = time.monotonic()
    log.data.setdefault(STAGE_TWO, [])
    for module in model.stage_one_modules():
        module.requires_grad_(False)
    weights = inverse_frequency_weights(train_counts(y))
    steps = math.ceil((len(x) + synthetic.total) / cfg.batch_size)
    schedule = _Schedule(cfg, model.meta, cfg.lr_cls, steps, cfg.epochs_meta)
    best: dict[str, Any] = {"key": [-1.0, -1.0], "epoch": 0}
    best_state = {k: v.detach().clone() for k, v in model.meta.state_dict().items()}
    ckpt, saved = _start(cfg, STAGE_TWO, model.meta, schedule, gen, log)
    epochs_run = 0
    if saved is not None:
        epochs_run = int(saved["epoch"])
        best, best_state = json.loads(saved["best"]), dict(saved["best_state"])
        start -= saved["seconds"]
        deadline -= saved["seconds"]
    early = schedule.early_stop(epochs_run, best["epoch"])
    last = last_epoch(saved, cfg.epochs_meta, early, deadline, log.data.get(STAGE_TWO, []))
    for epoch in range(epochs_run + 1, last + 1):
        t0 = time.monotonic()
        model.eval()  # the frozen backbones: GroupNorm only, no dropout, but say it
        model.meta.train()
        ex, ey = synthetic.epoch(epoch, x, y)
        if synthetic.total:
            weights = inverse_frequency_weights(train_counts(ey))
        total = 0.0
        bar = EpochProgress(STAGE_TWO, epoch, cfg.epochs_meta, steps)
        dev = model_device(model)
        w = to(weights, dev)
        for idx in _batches(len(ex), cfg.batch_size, gen):
            batch = to(augment_batch(ex[idx], gen, cfg.augment, intensity_channels=1), dev)
            with torch.no_grad():
                features = model.features(batch)
            loss = F.cross_entropy(
                model.classify_features(features),
                to(ey[idx], dev),
                weight=w,
                label_smoothing=cfg.label_smoothing,
            )
            schedule.opt.zero_grad(set_to_none=True)
            loss.backward()
            schedule.after_batch()
            total += loss.item() * len(idx)
            bar.update(loss.item(), len(idx))
        bar.close()
        probs = torch.softmax(predict(model, val_x), dim=1).numpy()
        metrics = classification_metrics(probs, val.labels)
        seconds = time.monotonic() - t0
        log.epoch_done(
            STAGE_TWO, epoch, loss=total / len(ex), lr=schedule.lr, val=metrics, seconds=seconds
        )
        epochs_run = epoch
        if list(_key(metrics)) > best["key"]:
            best = {"key": list(_key(metrics)), "epoch": epoch, **_plain(metrics)}
            best_state = {k: v.detach().clone() for k, v in model.meta.state_dict().items()}
        schedule.after_epoch(metrics["macro_f1"])
        early = schedule.early_stop(epoch, best["epoch"])
        stop = early or time.monotonic() + seconds > deadline
        snap = _snapshot(
            epoch, best, best_state, model.meta, schedule.opt, schedule.sched, gen, log, start
        )
        ckpt.save({**snap, "fingerprint": cfg.fingerprint(), "done": stop})
        if stop:
            why = (
                f"no better val macro-F1 in {PAPER_EARLY_STOP_PATIENCE} epochs"
                if early
                else "time budget"
            )
            print(f"[{STAGE_TWO}] stopping after epoch {epoch}: {why}", flush=True)
            break
    model.meta.load_state_dict(best_state)
    model.requires_grad_(True)  # the returned model is whole again (federated fine-tuning)
    return {
        "epochs_run": epochs_run,
        "best_epoch": best["epoch"],
        "val": {k: best[k] for k in ("macro_f1", "macro_auc", "accuracy") if k in best},
        "seconds": round(time.monotonic() - start, 1),
    }


def train_counts(labels: Tensor) -> list[int]:
    """Images per class (all `CLASSES`, zeros included) of a label tensor."""
    return [int(c) for c in torch.bincount(labels, minlength=3).tolist()]


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in ("accuracy", "macro_f1", "macro_auc")}


__all__ = [
    "CLASSIFIERS",
    "STAGE_ONE",
    "STAGE_TWO",
    "classifier_for",
    "describe",
    "train_any_classifier",
    "train_dual_stage",
]
