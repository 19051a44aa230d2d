"""Write docs/RESULTS.md from the measured JSON of `trainer.site_report` (docs/results/).

Nothing in the document is typed by hand: every figure is read from a JSON file that
`python -m trainer.site_report` wrote, which names the bundle (with the sha256 of its files),
the machine and the time it was measured.

    python -m trainer.results_doc --results docs/results --out docs/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from trainer.results_ablations import (
    render_ablations,
    render_classifier_ablations,
    render_normals,
    render_profiles,
)
from trainer.results_format import ABLATION_SITES, TARGET_NAMES, _ci, _f, _machines


def render_run(name: str, data: dict[str, Any], figures: dict[str, str] | None = None) -> list[str]:
    """The run's table; `figures` maps a test set to the link of its PNG (`trainer.figures`)."""
    lines = [
        f"### {name}: `{data['model']}`",
        "",
        f"Measured {data['measured']} on {data['machine']}; split `{data['split']}`; "
        f"95 % intervals from {data['bootstrap_resamples']} bootstrap resamples of the images.",
        "",
        "| test set | n | Dice (95 % CI) | IoU | HD95 px (median) | accuracy | macro F1 | "
        "AUC (95 % CI) | AUC kind | ECE | OOD flagged |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, t in data["targets"].items():
        s, c = t["segmentation"], t["classification"]
        lines.append(
            f"| {TARGET_NAMES.get(key, key)} | {t['n']} | {_f(s['dice'])}{_ci(s['dice_ci95'])} "
            f"| {_f(s['iou'])} | {_f(s['hd95_px_median'], 1)} | {_f(c['accuracy'])} "
            f"| {_f(c['macro_f1'])} | {_f(c['auc'])}{_ci(c['auc_ci95'])} | {c['auc_kind']} "
            f"| {_f(c.get('ece'))} | {_pct(t.get('ood_flagged'))} |"
        )
    ood = data.get("out_of_distribution")
    if ood:
        lines += [
            "",
            f"Out-of-distribution flag (threshold {ood['threshold']:.3f}): AUROC "
            f"{_f(ood['auroc_frames'])}{_ci(ood['auroc_frames_ci95'])} per frame "
            f"({ood['n_in_distribution']} test images vs {ood['n_out_frames']} frames of "
            f"{ood['n_out_files']} pydicom-data ultrasound files), {_f(ood['auroc_files'])} per "
            f"file; in-distribution images flagged {100 * ood['in_distribution_flagged']:.1f} %, "
            f"non-breast frames flagged {100 * ood['out_frames_flagged']:.1f} %.",
        ]
    phantoms = data.get("phantoms")  # reports since 2026-12-04
    if phantoms:
        missed = phantoms["missed"]
        lines += [
            "",
            f"Ultrasound phantoms flagged: {phantoms['flagged']} of {phantoms['n']}"
            + (
                ""
                if phantoms.get("least_margin") is None  # reports before the margin was kept
                else f" (the lowest OOD score {phantoms['least_margin']:.2f} times the threshold)"
            )
            + (
                "."
                if not missed
                else " (not shippable: tests/e2e/test_ood_shipped.py requires all); passed: "
                + ", ".join(
                    f"seed {m['seed']} echogenicity {m['echogenicity']} {m['posterior']}"
                    for m in missed
                )
                + "."
            ),
        ]
    if figures:
        links = ", ".join(f"[{TARGET_NAMES.get(k, k)}]({link})" for k, link in figures.items())
        lines += ["", f"Confusion matrix, ROC curves and reliability diagram: {links}."]
    return [*lines, ""]


def render_fold_reports(records: list[dict[str, Any]]) -> list[str]:
    """The tables of `trainer.fold_report`: each fold, the ensemble and the single model."""
    lines: list[str] = []
    for r in records:
        folds = "; ".join(
            f"fold {f['fold'] + 1}: {f['epochs_run']} epochs, best {f['best_epoch']}, "
            f"held-out Dice {f['held_out_dice']:.3f}"
            for f in r["folds"]
            if "epochs_run" in f
        )
        members = "seed" if r.get("ensemble_of") == "seed" else "fold"
        lines += [
            f"## {members.capitalize()} ensemble against its {members}s and the shipped model "
            "(generated from `docs/results/folds/`, `python -m trainer.fold_report`)",
            "",
            f"Measured {r['measured']} on {r['machine']}, {r['size']} px, test Dice at the "
            "network grid (mean over images with a lesion, 95 % bootstrap interval), each "
            f"model's mask threshold chosen on val." + (f" {folds}." if folds else ""),
            "",
            "| model | val | " + " | ".join(TARGET_NAMES.get(k, k) for k in ABLATION_SITES) + " |",
            "|---|---|" + "---|" * len(ABLATION_SITES),
        ]
        for name, c in r["contenders"].items():
            cells = [_f(c.get("val_dice"))]  # the Dice the threshold was chosen on
            for site in ABLATION_SITES:
                m = c["sites"].get(site)
                cells.append("n/a" if m is None else f"{_f(m['dice'])}{_ci(m['dice_ci95'])}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        unc = r.get("uncertainty", {})
        if unc:
            parts = [
                f"{TARGET_NAMES.get(k, k)} {_f(u['spearman_vs_dice_error'])}"
                for k, u in unc.items()
                if k in ABLATION_SITES
            ]
            lines += [
                "",
                f"Spearman correlation of the {members}s' disagreement with each test image's Dice "
                f"error (images with a lesion): {', '.join(parts)}.",
            ]
        lines.append("")
    return lines


def _pct(share: float | None) -> str:
    return "n/a" if share is None else f"{100 * share:.1f} %"


SEED_FIGURES = (  # (heading, where in a target's figures, digits)
    ("Dice", ("segmentation", "dice"), 3),
    ("IoU", ("segmentation", "iou"), 3),
    ("HD95 px (median)", ("segmentation", "hd95_px_median"), 1),
    ("accuracy", ("classification", "accuracy"), 3),
    ("macro F1", ("classification", "macro_f1"), 3),
    ("AUC", ("classification", "auc"), 3),
    ("ECE", ("classification", "ece"), 3),
)


# The tables over seeds: the folder under docs/results, the heading, what was run.
SEED_TABLES: dict[str, tuple[str, str]] = {
    "seeds": (
        "The shipped recipe's network over seeds",
        "The `python -m trainer.train` command of `make train` (the network; the layer probe "
        "`make train` fits after it is not in these figures)",
    ),
    "seeds-probe": (
        "The whole-image probe over seeds",
        "The `python -m trainer.train` command of `make train`, then the layer probe fitted "
        "by `python -m trainer.probe --no-lesion-means` on that network (the recipe of "
        "bundles 0.2.4 and 0.2.5)",
    ),
    "seeds-lesion": (
        "The shipped bundle over seeds",
        "`make train` in full: the `python -m trainer.train` command, then the layer probe "
        "with lesion means fitted by `python -m trainer.probe` on that network (the shipped "
        "bundle's recipe)",
    ),
}


def render_seeds(records: list[dict[str, Any]], folder: str = "seeds") -> list[str]:
    """A recipe over seeds (`trainer.site_report` of each seed's bundle, in
    ``docs/results/<folder>/``, a key of `SEED_TABLES`): per test set the mean ± SD over the
    seeds of each figure, then each seed's Dice and AUC."""
    if not records:
        return []
    title, what = SEED_TABLES[folder]
    records = sorted(records, key=lambda r: (r.get("seed") is None, r.get("seed") or 0))
    seeds = ", ".join(f"{r.get('seed', 'n/a')} (`{r['model']}`)" for r in records)
    heads = [h for h, _, _ in SEED_FIGURES]
    lines = [
        f"## {title} (generated from `docs/results/{folder}/*.json`)",
        "",
        f"{what} run with {len(records)} seeds: {seeds}, each "
        "measured by `python -m trainer.site_report` exactly as the tables above; mean ± SD "
        "(sample SD) over the seeds, the OOD share in percent.",
        "",
        "| test set | n | " + " | ".join(heads) + " | OOD flagged |",
        "|---|---|" + "---|" * (len(heads) + 1),
    ]
    sites = [k for k in TARGET_NAMES if all(k in r["targets"] for r in records)]
    for site in sites:
        targets = [r["targets"][site] for r in records]
        cells = []
        for _, (part, key), digits in SEED_FIGURES:
            cells.append(_mean_sd([t[part].get(key) for t in targets], digits))
        shares = [t.get("ood_flagged") for t in targets]
        ood = [100 * v for v in shares if v is not None]
        cells.append(_mean_sd(ood, 1) if len(ood) == len(shares) else "n/a")
        lines.append(f"| {TARGET_NAMES[site]} | {targets[0]['n']} | {' | '.join(cells)} |")
    lines += ["", "| test set | " + " | ".join(f"seed {r.get('seed')}" for r in records) + " |"]
    lines.append("|---|" + "---|" * len(records))
    for site in sites:
        per = [
            f"Dice {_f(r['targets'][site]['segmentation']['dice'])}, "
            f"AUC {_f(r['targets'][site]['classification']['auc'])}"
            for r in records
        ]
        lines.append(f"| {TARGET_NAMES[site]} | {' | '.join(per)} |")
    return [*lines, ""]


def _mean_sd(values: list[float | None], digits: int) -> str:
    """``mean ± SD`` of the values, or n/a where a seed has none."""
    if not values or any(v is None for v in values):
        return "n/a"
    v = np.asarray(values, float)
    sd = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return f"{v.mean():.{digits}f} ± {sd:.{digits}f}"


def render_ood_layers(records: list[dict[str, Any]]) -> list[str]:
    """The candidate OOD heads (`trainer.ood_layers`), each on every network measured: what
    it flags of the test images and how near it came to letting a phantom through."""
    if not records:
        return []

    def phantoms(p: dict[str, Any] | None) -> str:
        return "n/a" if p is None else f"{p['flagged']}/{p['n']} ({p['least_margin']:.2f})"

    lines = [
        "## Out-of-distribution heads over other layers (generated from "
        "`docs/results/ood-layers/*.json`)",
        "",
        "`python -m trainer.ood_layers` on each network: each candidate head fitted on the "
        "train split, its threshold flagging "
        f"{_pct(records[0]['flagged_share_of_val'])} of val as the export sets it. Phantoms: "
        "flagged of n, and in brackets the lowest score over the threshold (under 1: one got "
        "through). The phantoms to choose on are 60 others than the 24 the shipped-model test "
        "checks (`trainer.ood_layers.selection_specs`); the ultrasound frames are "
        "pydicom-data's non-breast ones. Shipped bundles 0.2.1 to 0.2.7 score all six layers. "
        f"Measured {', '.join(sorted({r['measured'][:10] for r in records}))}. "
        f"{_machines(records)}",
        "",
        "| head | network | test flagged | phantoms to choose on | the 24 tested | "
        "ultrasound frames | AUROC test vs frames |",
        "|---|---|---|---|---|---|---|",
    ]
    for head in records[0]["heads"]:
        for r in records:
            h = r["heads"][head]
            frames = h.get("ultrasound_frames")
            lines.append(
                f"| {head} | {r['model']} | {_pct(h['test_flagged'])} | "
                f"{phantoms(h['selection_phantoms'])} | {phantoms(h['check_phantoms'])} | "
                f"{'n/a' if frames is None else str(frames['flagged']) + '/' + str(frames['n'])} "
                f"| {_f(h.get('auroc_test_vs_frames'))} |"
            )
    lines += [
        "",
        "Each layer alone, the lowest score over its threshold on the phantoms to choose on / "
        "the 24 tested:",
        "",
        "| network | " + " | ".join(records[0]["single_layers"]) + " |",
        "|---|" + "---|" * len(records[0]["single_layers"]),
    ]
    for r in records:
        cells = [
            f"{v['selection_phantoms']['least_margin']:.2f} / "
            f"{v['check_phantoms']['least_margin']:.2f}"
            for v in r["single_layers"].values()
        ]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _load_all(folder: Path) -> list[dict[str, Any]]:
    """Every JSON record in `folder`, in file-name order (none where it does not exist)."""
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.results_doc", description=__doc__)
    parser.add_argument("--results", type=Path, default=Path("docs/results"))
    parser.add_argument("--out", type=Path, default=Path("docs/RESULTS.md"))
    parser.add_argument("--intro", type=Path, default=None, help="Markdown placed first")
    a = parser.parse_args(argv)
    files = sorted(a.results.glob("*.json"))
    if not files:
        raise SystemExit(f"no result JSON in {a.results}: run python -m trainer.site_report")
    lines = [a.intro.read_text(encoding="utf-8").rstrip(), ""] if a.intro else []
    lines += ["## Measured figures (generated by `python -m trainer.results_doc`)", ""]
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        pngs = {key: (a.results / "figures" / f"{path.stem}-{key}.png") for key in data["targets"]}
        links = {
            k: png.resolve().relative_to(a.out.resolve().parent).as_posix()
            for k, png in pngs.items()
            if png.is_file()
        }
        lines += render_run(path.stem, data, links)
    ablations = _load_all(a.results / "ablations")
    for folder in SEED_TABLES:
        lines += render_seeds(_load_all(a.results / folder), folder)
    lines += render_ablations([r for r in ablations if r.get("kind") != "classifier_ablation"])
    lines += render_classifier_ablations(
        [r for r in ablations if r.get("kind") == "classifier_ablation"]
    )
    lines += render_normals(_load_all(a.results / "normals"))
    lines += render_profiles(_load_all(a.results / "profiles"))
    lines += render_fold_reports(_load_all(a.results / "folds"))
    lines += render_ood_layers(_load_all(a.results / "ood-layers"))
    a.out.write_text("\n".join(lines), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
