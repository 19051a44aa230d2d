"""Segmentation ablations and seeds of issue 10 on one split and one (short) schedule.

Each variant trains a MAU-Net with `trainer.loops.train_segmenter` (the trainer's own stage
1: same loss, augmentation, optimiser, selection on val) and is measured on the val split
and on every site's test split at the network grid, after the node's own postprocessing,
with the mask threshold chosen on val. A variant's result is written to
``<out>/<variant>-seed<k>.json`` as soon as it is finished; a rerun skips finished ones and
resumes an interrupted one from its per-epoch checkpoint (``--work-dir``).

Variants:
- ``full``: MAU-Net as shipped (channel and spatial attention), trained on BUSI + BUS-BRA;
- ``no-channel-attention``, ``no-spatial-attention``, ``no-attention``: the attentions off;
- ``busi-only``: the full MAU-Net trained on BUSI alone (measured on every site);
- ``presence-loss``: the full MAU-Net with `trainer.losses.lesion_presence_loss` added at
  weight 1 (against the lesions the segmenter draws on normal images);
- ``normals-x4``: the full MAU-Net with each lesion-free training image drawn 4 times an
  epoch (`trainer.loops.stage1_pool`; 103 of 1,353 images, so 412 of 1,662 draws).

Classifier variants (``--classifiers``), each trained on the frozen ``full`` MAU-Net of the
same seed (restored from its finished checkpoint, not retrained), measured by AUC, accuracy
and macro F1 on every site's test split:
- ``dual-stage``: the FAME dual-stage classifier, ``edge`` profile, the three backbones fused;
- ``dual-stage-resnet50v2`` / ``-nasnet`` / ``-maunet-encoder``: one backbone alone;
- ``dual-stage-acgan``: the fusion with ACGAN images of the minority classes (``--acgan``);
- ``dual-stage-paper``: the fusion at the ``paper`` profile's published widths (ResNet50V2,
  NASNet-A Large; about 120 M parameters), on the same short schedule: the nearest this CPU
  comes to training the ``paper`` profile;
- ``preact-resnet``: the shipped bundle's classifier kind, for comparison.

The schedule is shorter than the shipped model's (``--size``, ``--epochs``) so that every
variant fits on a 2-core CPU: the figures compare variants with each other, not with the
shipped bundle (`docs/RESULTS.md` says so next to the table).

    python -m trainer.ablations --out docs/results/ablations --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from appliance.postprocess import clean_mask
from trainer.data import SITE_SHIFT, ArraySet, load_datasets
from trainer.device import describe as describe_device
from trainer.device import resolve
from trainer.dual_stage_train import train_any_classifier
from trainer.loops import Logger, predict, segmentation_metrics, train_segmenter
from trainer.metrics import classification_report, dice
from trainer.models import CLASSES
from trainer.run_config import TrainConfig
from trainer.seed import seed_everything
from trainer.site_report import bootstrap_ci

VARIANTS: dict[str, dict[str, Any]] = {
    "full": {},
    "no-channel-attention": {"channel_attention": False},
    "no-spatial-attention": {"spatial_attention": False},
    "no-attention": {"channel_attention": False, "spatial_attention": False},
    "busi-only": {"busi_only": True},
    "presence-loss": {"presence_weight": 1.0},
    "normals-x4": {"normal_repeat": 4},
}
CLASSIFIER_VARIANTS: dict[str, dict[str, Any]] = {
    "dual-stage": {"classifier": "dual-stage"},
    "dual-stage-resnet50v2": {"classifier": "dual-stage", "backbones": ("resnet50v2",)},
    "dual-stage-nasnet": {"classifier": "dual-stage", "backbones": ("nasnet",)},
    "dual-stage-maunet-encoder": {"classifier": "dual-stage", "backbones": ("maunet-encoder",)},
    "dual-stage-acgan": {"classifier": "dual-stage", "acgan": True},
    "dual-stage-paper": {"classifier": "dual-stage", "profile": "paper"},
    "preact-resnet": {"classifier": "preact-resnet"},
}
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def site_of_names(busbra_manifest: Path) -> dict[str, str]:
    """``busbra/<image>`` -> its scanner (the manifest's ``site`` column)."""
    with busbra_manifest.open(newline="") as f:
        return {f"busbra/{row['image']}": row["site"] for row in csv.DictReader(f)}


def by_site(arrays: ArraySet, sites: dict[str, str]) -> dict[str, ArraySet]:
    """The test split cut per site: ``busi`` and ``busbra-<scanner>``."""
    keys = [
        "busi" if n.startswith("busi/") else f"busbra-{sites.get(n, 'unknown')}"
        for n in arrays.names
    ]
    out: dict[str, ArraySet] = {}
    for key in sorted(set(keys)):
        sel = np.array([k == key for k in keys])
        out[key] = ArraySet(
            images=arrays.images[sel],
            masks=arrays.masks[sel],
            labels=arrays.labels[sel],
            names=tuple(n for n, s in zip(arrays.names, sel, strict=True) if s),
        )
    return out


def measure(
    prob: np.ndarray[Any, Any], arrays: ArraySet, threshold: float, min_area: float
) -> dict[str, Any]:
    """Dice / IoU at `threshold` and a 95 % bootstrap interval of the Dice."""
    got = segmentation_metrics(prob, arrays.masks, threshold, min_area)
    per_image = np.array(
        [
            dice(clean_mask(p, threshold, min_area)[0], m)
            for p, m in zip(prob, arrays.masks, strict=True)
            if m.any()
        ]
    )
    ci = (
        bootstrap_ci(len(per_image), lambda idx: float(per_image[idx].mean()), 1000)
        if len(per_image)
        else None
    )
    return {
        "n": len(arrays),
        "n_lesion": len(per_image),
        "dice": round(got["dice"], 4),
        "dice_ci95": ci,
        "iou": round(got["iou"], 4),
        "fp_rate_normal": round(got.get("fp_rate_normal", float("nan")), 4),
    }


def run_variant(
    name: str, seed: int, args: argparse.Namespace, out_dir: Path
) -> dict[str, Any] | None:
    """Train and measure one variant; returns its record (None if already written)."""
    target = out_dir / f"{name}-seed{seed}.json"
    if target.is_file():
        print(f"[ablations] {target} exists: skipped", flush=True)
        return None
    spec = dict(VARIANTS[name])
    busi_only = bool(spec.pop("busi_only", False))
    manifests = [args.busi] if busi_only else [args.busi, args.busbra]
    cfg = _seg_config(name, seed, args, manifests, spec)
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    gen = seed_everything(seed, threads=args.threads)
    data = load_datasets(cfg.manifests, cfg.preprocess_params(), cfg.cache_dir)
    # Every variant is measured on the same test sets: all sites, whatever it trained on.
    everything = data
    if busi_only:
        everything = load_datasets([args.busi, args.busbra], cfg.preprocess_params(), cfg.cache_dir)
    started = time.monotonic()
    log = Logger(cfg.work_dir / "training_log.json", cfg)
    model, summary = train_segmenter(cfg, data["train"], data["val"], gen, log)
    return _finish_segmentation(
        name, seed, args, cfg, manifests, data, everything, model, summary, started, target
    )


def _seg_config(
    name: str, seed: int, args: argparse.Namespace, manifests: list[Path], spec: dict[str, Any]
) -> TrainConfig:
    """The stage-1 settings of segmentation variant `name` (also how a classifier variant
    finds the finished ``full`` segmenter again: the same settings resume it)."""
    return TrainConfig(
        manifest=manifests[0],
        extra_manifests=tuple(manifests[1:]),
        out=args.out,
        work_dir=args.work_dir / f"{name}-seed{seed}",
        cache_dir=args.cache_dir,
        size=args.size,
        seed=seed,
        threads=args.threads,
        device=args.device,
        epochs_seg=args.epochs,
        max_minutes=1e6,
        seg_share=1.0,
        augment=SITE_SHIFT,
        **spec,
    )


def _finish_segmentation(
    name: str,
    seed: int,
    args: argparse.Namespace,
    cfg: TrainConfig,
    manifests: list[Path],
    data: dict[str, ArraySet],
    everything: dict[str, ArraySet],
    model: torch.nn.Module,
    summary: dict[str, Any],
    started: float,
    target: Path,
) -> dict[str, Any]:
    threshold = float(summary["threshold"])
    sites = site_of_names(args.busbra)
    figures: dict[str, Any] = {}
    for split in ("val", "test"):
        for site, arrays in by_site(everything[split], sites).items():
            prob = torch.sigmoid(predict(model, torch.from_numpy(arrays.images[:, None])))
            figures[f"{split}/{site}"] = measure(
                prob.numpy()[:, 0], arrays, threshold, cfg.min_lesion_area_px
            )
    record = {
        "kind": "segmentation_ablation",
        "variant": name,
        "seed": seed,
        "settings": {
            "size": cfg.size,
            "epochs": cfg.epochs_seg,
            "base_width": cfg.base_width,
            "channel_attention": cfg.channel_attention,
            "spatial_attention": cfg.spatial_attention,
            "presence_weight": cfg.presence_weight,
            "normal_repeat": cfg.normal_repeat,
            "trained_on": [m.parent.name for m in manifests],
            "augment": "site-shift",
            "optimizer": f"AdamW lr {cfg.lr_seg} wd {cfg.weight_decay}, warmup + cosine",
            "batch_size": cfg.batch_size,
        },
        "train_images": len(data["train"]),
        "best_epoch": summary["best_epoch"],
        "threshold": threshold,
        "figures": figures,
        **_provenance(args, started),
        "note": "network grid (size x size), Dice / IoU means over images with a lesion",
    }
    _write(target, record)
    return record


def _provenance(args: argparse.Namespace, started: float) -> dict[str, Any]:
    """How long a variant took, on what, and when: the tail of every record."""
    device = resolve(args.device)
    where = "" if device.type == "cpu" else f", training on {describe_device(device)}"
    return {
        "seconds": round(time.monotonic() - started, 1),
        "machine": f"{platform.machine()} CPU, {args.threads} thread(s), load average "
        f"{os.getloadavg()[0]:.1f} at the end{where}",
        "torch": torch.__version__,
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _write(target: Path, record: dict[str, Any]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(target)
    print(f"[ablations] wrote {target}", flush=True)


def classifier_variant_config(
    name: str, seed: int, args: argparse.Namespace, seg_cfg: TrainConfig
) -> TrainConfig:
    """The training config of classifier variant `name`: the segmentation config of the
    seed's ``full`` MAU-Net with the variant's classifier settings (profile ``edge`` unless
    the variant names another)."""
    spec = dict(CLASSIFIER_VARIANTS[name])
    if spec.pop("acgan", False):
        if args.acgan is None:
            raise SystemExit(
                f"classifier variant {name} needs --acgan DIR (python -m trainer.acgan)"
            )
        spec["acgan"] = args.acgan
    return dataclasses.replace(
        seg_cfg,
        work_dir=args.work_dir / f"cls-{name}-seed{seed}",
        epochs_cls=args.epochs_cls,
        epochs_meta=args.epochs_meta,
        **{"profile": "edge", **spec},
    )


def run_classifier_variant(
    name: str, seed: int, args: argparse.Namespace, out_dir: Path
) -> dict[str, Any] | None:
    """Train and measure classifier variant `name` on the seed's frozen ``full`` MAU-Net."""
    target = out_dir / f"cls-{name}-seed{seed}.json"
    if target.is_file():
        print(f"[ablations] {target} exists: skipped", flush=True)
        return None
    manifests = [args.busi, args.busbra]
    seg_cfg = _seg_config("full", seed, args, manifests, {})
    if not (seg_cfg.work_dir / "stage1.resume.pt").is_file():
        raise SystemExit(
            f"classifier variant {name}: the full MAU-Net of seed {seed} is not trained "
            f"({seg_cfg.work_dir}); run the segmentation variant 'full' first"
        )
    gen = seed_everything(seed, threads=args.threads)
    data = load_datasets(seg_cfg.manifests, seg_cfg.preprocess_params(), seg_cfg.cache_dir)
    seg_log = Logger(seg_cfg.work_dir / "restored_log.json", seg_cfg)
    segmenter, _ = train_segmenter(seg_cfg, data["train"], data["val"], gen, seg_log)
    cfg = classifier_variant_config(name, seed, args, seg_cfg)
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    gen = seed_everything(seed, threads=args.threads)
    log = Logger(cfg.work_dir / "training_log.json", cfg)
    classifier, summary = train_any_classifier(
        cfg, segmenter, data["train"], data["val"], gen, log, deadline=time.monotonic() + 1e9
    )
    classifier.eval()
    sites = site_of_names(args.busbra)
    figures: dict[str, Any] = {}
    for split in ("val", "test"):
        for site, arrays in by_site(data[split], sites).items():
            x = torch.from_numpy(arrays.images[:, None])
            with torch.no_grad():
                lesion = torch.sigmoid(predict(segmenter, x))
                logits = predict(classifier, torch.cat([x, lesion], dim=1))
            probs = torch.softmax(logits, dim=1).double().numpy()
            figures[f"{split}/{site}"] = classification_figures(probs, arrays.labels)
    record = {
        "kind": "classifier_ablation",
        "variant": name,
        "seed": seed,
        "settings": {
            "size": cfg.size,
            "classifier": cfg.classifier,
            "parameters": sum(p.numel() for p in classifier.parameters()),
            "profile": cfg.profile if cfg.classifier == "dual-stage" else None,
            "backbones": list(cfg.backbones) if cfg.classifier == "dual-stage" else None,
            "epochs_cls": cfg.epochs_cls,
            "epochs_meta": cfg.epochs_meta if cfg.classifier == "dual-stage" else None,
            "acgan": str(cfg.acgan) if cfg.acgan else None,
            "segmenter": f"full MAU-Net, seed {seed} ({seg_cfg.epochs_seg} epochs), frozen",
            "trained_on": [m.parent.name for m in manifests],
            "augment": "site-shift",
        },
        "train_images": len(data["train"]),
        "summary": {k: v for k, v in summary.items() if isinstance(v, int | float | str)},
        "figures": figures,
        **_provenance(args, started),
        "note": "uncalibrated softmax of the classifier; AUC: macro one-vs-rest on BUSI, "
        "malignant vs benign on BUS-BRA (trainer.metrics.classification_report)",
    }
    _write(target, record)
    return record


def classification_figures(
    probs: np.ndarray[Any, Any], labels: np.ndarray[Any, Any]
) -> dict[str, Any]:
    """Accuracy, macro F1 and AUC (with a 95 % bootstrap interval) of one test set."""
    report = classification_report(list(labels), probs, CLASSES)

    def auc(idx: np.ndarray[Any, Any]) -> float | None:
        return classification_report(list(labels[idx]), probs[idx], CLASSES).macro_auc

    return {
        "n": len(labels),
        "accuracy": round(report.accuracy, 4),
        "macro_f1": round(report.macro_f1, 4),
        "auc": None if report.macro_auc is None else round(report.macro_auc, 4),
        "auc_ci95": bootstrap_ci(len(labels), auc, 1000),
        "auc_kind": report.auc_kind,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.ablations", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/results/ablations"))
    parser.add_argument("--busi", type=Path, default=SHARED / "busi" / "manifest.csv")
    parser.add_argument("--busbra", type=Path, default=SHARED / "busbra" / "manifest.csv")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--classifiers",
        nargs="*",
        default=[],
        choices=list(CLASSIFIER_VARIANTS),
        help="classifier variants, run after the segmentation ones (seed: the first --seeds)",
    )
    parser.add_argument("--epochs-cls", type=int, default=6, help="classifier / stage one")
    parser.add_argument("--epochs-meta", type=int, default=4, help="dual-stage stage two")
    parser.add_argument("--acgan", type=Path, default=None, help="trained ACGAN (trainer.acgan)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    parser.add_argument(
        "--seeds-for", nargs="+", default=["full"], help="variants run with every --seeds"
    )
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda (cuda:N) or auto")
    parser.add_argument("--work-dir", type=Path, default=Path(".cache/ablations"))
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache"))
    args = parser.parse_args(argv)
    for path in (args.busi, args.busbra):
        if not path.is_file():
            raise SystemExit(f"{path}: manifest not found; pass --busi / --busbra")
    plan = [
        (name, seed)
        for name in args.variants
        for seed in (args.seeds if name in args.seeds_for else args.seeds[:1])
    ]
    # One seed of every variant first, then the further seeds: a stop half-way leaves the
    # whole table with one seed rather than three seeds of a few rows.
    plan.sort(key=lambda p: (args.seeds.index(p[1]), list(VARIANTS).index(p[0])))
    for name, seed in plan:
        run_variant(name, seed, args, args.out)
    for name in args.classifiers:
        run_classifier_variant(name, args.seeds[0], args, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
