"""The fold ensemble's segmentation against its own folds and the shipped model, per site.

``python -m trainer.fold_report --work-dir DIR --bundle models/default --out JSON`` reads
the best-epoch fold MAU-Nets a ``--folds K`` run left in ``DIR/fold<i>/stage1.resume.pt``
(weights-only, the trainer's own per-epoch checkpoints; a finished run clears them, so
``--ensemble BUNDLE`` takes the folds of a verified fold-ensemble bundle instead, and
``--members BUNDLE BUNDLE...`` the MAU-Nets of verified single-model bundles, such as the
seeds of one recipe each trained on the whole train split, as a seed ensemble), and
measures on every site's test
split, at the network grid: each fold alone, the ensemble's mean map, and the segmenter of
the verified `bundle` (the shipped single MAU-Net). Every model's mask threshold is chosen
on the val split, as training does. The ensemble's fold disagreement is set against each
test image's Dice error (Spearman, images with a lesion).

This is the issue's "one fold against the fold ensemble" ablation at full scale, and it
needs no classifier: a run stopped after stage 1 (the classifier on three folds' maps takes
longer than stage 1 on two CPU cores) can still be measured. `trainer.results_doc` renders
the JSON into docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from appliance.bundle import load_bundle
from appliance.evaluate import spearman
from trainer.ablations import by_site, measure, site_of_names
from trainer.data import ArraySet, load_datasets
from trainer.fold_training import per_image_dice_error
from trainer.loops import choose_threshold, predict
from trainer.models import FoldEnsemble, MAUNet
from trainer.resume import StageCheckpoint
from trainer.weights import load_bundle_net


def load_folds(work_dir: Path, base_width: int) -> tuple[list[MAUNet], list[dict[str, Any]]]:
    """The best-epoch MAU-Net of every ``fold<i>`` below `work_dir`, and what each ran."""
    members, runs = [], []
    for i in range(16):
        saved = StageCheckpoint(work_dir / f"fold{i}", "stage1").load()
        if saved is None:
            break
        model = MAUNet(base_width=base_width)
        model.load_state_dict(saved["best_state"])
        best = json.loads(saved["best"])
        runs.append(
            {
                "fold": i,
                "epochs_run": int(saved["epoch"]),
                "best_epoch": int(best["epoch"]),
                "held_out_dice": round(float(best["dice"]), 4),
                "seconds": round(float(saved["seconds"]), 1),
                "stopped": "budget or done" if saved.get("done") else "interrupted",
            }
        )
        members.append(model.eval())
    if len(members) < 2:
        raise SystemExit(
            f"{work_dir}: found {len(members)} fold checkpoint(s) (fold<i>/stage1.resume.pt); "
            "train the folds first (python -m trainer.train --folds 3 ...)"
        )
    return members, runs


def bundle_folds(path: Path) -> tuple[list[MAUNet], list[dict[str, Any]]]:
    """The fold MAU-Nets of a verified fold-ensemble bundle, and its per-fold record."""
    bundle = load_bundle(path)
    segmenter = load_bundle_net(bundle).segmenter
    if not isinstance(segmenter, FoldEnsemble):
        raise SystemExit(f"{path}: its segmenter is one MAU-Net, not a fold ensemble")
    members = [m for m in segmenter.members if isinstance(m, MAUNet)]
    runs: list[dict[str, Any]] = [{"fold": i} for i in range(len(members))]
    log = path / "training_log.json"  # verified with the bundle where its manifest lists it
    if "training_log.json" in bundle.manifest.files and log.is_file():
        per_fold = json.loads(log.read_text(encoding="utf-8")).get("stage1_summary", {})
        for run, record in zip(runs, per_fold.get("per_fold", []), strict=False):
            run.update({k: record[k] for k in _FOLD_KEYS if k in record})
    return [m.eval() for m in members], runs


_FOLD_KEYS = ("epochs_run", "best_epoch", "held_out_dice")


def member_bundles(paths: list[Path]) -> tuple[list[MAUNet], list[dict[str, Any]]]:
    """The MAU-Nets of verified single-model bundles (several seeds of one recipe, each
    trained on the whole train split) to average as one ensemble, and which bundle each is.
    They must share their preprocessing: the maps are averaged pixel for pixel."""
    if len(paths) < 2:
        raise SystemExit(f"--members needs at least 2 bundles to average, got {len(paths)}")
    members: list[MAUNet] = []
    runs: list[dict[str, Any]] = []
    first = None
    for i, path in enumerate(paths):
        bundle = load_bundle(path)
        params = bundle.manifest.preprocess_params()
        if first is not None and params != first:
            raise SystemExit(
                f"{path}: its preprocessing ({params}) is not the first member's ({first}); "
                "an ensemble averages maps of the same grid"
            )
        first = params
        segmenter = load_bundle_net(bundle).segmenter
        if not isinstance(segmenter, MAUNet):
            raise SystemExit(f"{path}: its segmenter is not one MAU-Net; name single models")
        seed = bundle.manifest.training.get("seed")
        runs.append(
            {
                "fold": i,
                "name": bundle.version_label + (f" (seed {seed})" if seed is not None else ""),
                "seed": seed,
            }
        )
        members.append(segmenter.eval())
    return members, runs


def probabilities(model: torch.nn.Module, images: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    x = torch.from_numpy(np.ascontiguousarray(images[:, None]))
    with torch.no_grad():
        return torch.sigmoid(predict(model, x)).numpy()[:, 0]


def contender_figures(
    model: torch.nn.Module, val: ArraySet, sites: dict[str, ArraySet], min_area: float
) -> dict[str, Any]:
    """Threshold on val, then Dice / IoU per test site (`trainer.ablations.measure`)."""
    threshold, sweep = choose_threshold(probabilities(model, val.images), val.masks, min_area)
    return {
        "threshold": threshold,
        "val_dice": round(float(sweep[threshold]["dice"]), 4),  # what the choice saw
        "sites": {
            name: measure(probabilities(model, a.images), a, threshold, min_area)
            for name, a in sites.items()
        },
    }


def uncertainty_figures(
    ensemble: FoldEnsemble, threshold: float, sites: dict[str, ArraySet], min_area: float
) -> dict[str, Any]:
    """Per site: Spearman of the fold disagreement with the Dice error, median disagreement."""
    out: dict[str, Any] = {}
    for name, a in sites.items():
        x = torch.from_numpy(np.ascontiguousarray(a.images[:, None]))
        with torch.no_grad():
            parts = [ensemble.predict(x[i : i + 32]) for i in range(0, len(x), 32)]
        prob = torch.cat([m for m, _ in parts]).numpy()[:, 0]
        u = torch.cat([d for _, d in parts]).numpy()
        error = per_image_dice_error(prob, a.masks, threshold, min_area)
        lesion = a.masks.reshape(len(a), -1).any(axis=1)
        rho = spearman(list(u[lesion]), list(error[lesion])) if lesion.sum() > 2 else None
        out[name] = {
            "spearman_vs_dice_error": None if rho is None else round(rho, 4),
            "median": round(float(np.median(u)), 4),
            "n_lesion": int(lesion.sum()),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.fold_report", description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--work-dir", type=Path, help="the --folds run's folder")
    source.add_argument("--ensemble", type=Path, help="a fold-ensemble bundle")
    source.add_argument(
        "--members",
        type=Path,
        nargs="+",
        help="single-model bundles (seeds of one recipe) averaged as one ensemble",
    )
    parser.add_argument("--bundle", type=Path, required=True, help="the single model to compare")
    parser.add_argument("--manifest", type=Path, action="append", required=True)
    parser.add_argument("--base-width", type=int, default=16)
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache"))
    parser.add_argument("--out", type=Path, required=True)
    a = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    bundle = load_bundle(a.bundle)
    single = load_bundle_net(bundle).segmenter.eval()
    if a.ensemble is not None:
        members, runs = bundle_folds(a.ensemble)
    elif a.members is not None:
        members, runs = member_bundles(a.members)
    else:
        members, runs = load_folds(a.work_dir, a.base_width)
    ensemble = FoldEnsemble(members).eval()
    data = load_datasets(a.manifest, bundle.manifest.preprocess_params(), a.cache_dir)
    busbra = [m for m in a.manifest if m.parent.name == "busbra"]
    sites = (
        by_site(data["test"], site_of_names(busbra[0]) if busbra else {})
        if len(a.manifest) > 1  # names are prefixed with their data set's folder
        else {a.manifest[0].parent.name: data["test"]}
    )
    kind = "seed" if a.members is not None else "fold"
    contenders: dict[str, torch.nn.Module] = {
        r.get("name", f"fold {r['fold'] + 1}"): m for r, m in zip(runs, members, strict=True)
    }
    mean_map = f"{kind} ensemble (mean map)"
    contenders[mean_map] = ensemble
    contenders[f"single model ({bundle.version_label})"] = single
    # The node's own rule for what counts as a lesion (the compared bundle's).
    min_area = float(bundle.manifest.postprocessing["min_lesion_area_px"])
    figures = {
        name: contender_figures(m, data["val"], sites, min_area) for name, m in contenders.items()
    }
    record = {
        "kind": "fold_report",
        "measured": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
        "size": bundle.manifest.preprocess_params().size,
        "ensemble_of": kind,  # folds of the train split, or seeds each trained on all of it
        "folds": runs,
        "contenders": figures,
        "uncertainty": uncertainty_figures(
            ensemble, figures[mean_map]["threshold"], sites, min_area
        ),
        "compared_bundle": bundle.version_label,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    for name, f in figures.items():
        print(name, {k: v["dice"] for k, v in f["sites"].items()}, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
