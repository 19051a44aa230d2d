"""The ablation tables of docs/RESULTS.md (`trainer.ablations` records): segmentation
variants, the remedies against lesions on normal images, classifier variants and the two
profiles of the dual-stage classifier. `trainer.results_doc` puts them in the document."""

from __future__ import annotations

from typing import Any

import numpy as np

from trainer.results_format import ABLATION_SITES, TARGET_NAMES, _ci, _f, _machines


def render_ablations(records: list[dict[str, Any]]) -> list[str]:
    """The segmentation ablation table (`trainer.ablations`): per variant and test site,
    the mean ± SD of the Dice over seeds where there are several, else the one seed's Dice
    with its 95 % bootstrap interval."""
    if not records:
        return []
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_variant.setdefault(r["variant"], []).append(r)
    first = records[0]["settings"]
    lines = [
        "## Segmentation ablations (generated from `docs/results/ablations/*.json`)",
        "",
        f"Every variant trained by `python -m trainer.ablations` on the same split with the "
        f"same short schedule: {first['size']}x{first['size']} input, {first['epochs']} "
        f"epochs, MAU-Net base width {first['base_width']}, {first['optimizer']}, batch "
        f"{first['batch_size']}, {first['augment']} augmentation. Dice on each site's test "
        "split at the network grid (mean over images with a lesion), mask threshold chosen "
        "on val. The schedule is much shorter than the shipped model's, so compare the rows "
        "with each other, not with the tables above.",
        "",
        *_site_table_head("variant", "trained on", "seeds"),
    ]
    for variant, runs in by_variant.items():
        runs.sort(key=lambda r: r["seed"])
        cells = []
        for site in ABLATION_SITES:
            got = [r["figures"].get(f"test/{site}") for r in runs]
            values = [g["dice"] for g in got if g is not None]
            if not values:
                cells.append("n/a")
            elif len(values) == 1:
                ci = got[0]["dice_ci95"] if got[0] else None
                cells.append(f"{values[0]:.3f}{_ci(ci)}")
            else:
                cells.append(f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}")
        lines.append(
            f"| {variant} | {' + '.join(runs[0]['settings']['trained_on'])} | "
            f"{', '.join(str(r['seed']) for r in runs)} | {' | '.join(cells)} | "
            f"{runs[0]['seconds'] / 60:.0f} |"
        )
    return [*lines, "", _machines(records), ""]


# The variants against lesions on normal images (`render_normals`) and what each changes.
NORMALS_VARIANTS = {
    "presence-loss": "adds `trainer.losses.lesion_presence_loss` at weight 1, the binary "
    "cross-entropy of the mean of each image's top 0.5 % logits against whether the image "
    "has a lesion (a term that stays steep on a false lesion)",
    "normals-x4": "draws each lesion-free training image 4 times an epoch "
    "(`trainer.loops.stage1_pool`: 412 of 1,662 draws instead of 103 of 1,353)",
}


def render_normals(records: list[dict[str, Any]]) -> list[str]:
    """Variants against the lesions drawn on normal images beside the shipped recipe
    (``docs/results/normals``, `trainer.ablations --variants full VARIANT`): per variant
    the Dice of each test site and the share of BUSI's normal images given a lesion, mean
    ± SD over seeds."""
    if not records:
        return []
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(records, key=lambda r: (r["variant"] != "full", r["variant"], r["seed"])):
        by_variant.setdefault(r["variant"], []).append(r)
    first = records[0]["settings"]
    threads = records[0]["machine"].split(" thread(s)")[0].rsplit(", ", 1)[-1]
    tried = [v for v in by_variant if v != "full"]
    commands = "; ".join(
        f"`python -m trainer.ablations --out docs/results/normals --variants full {v} --seeds "
        f"{' '.join(str(r['seed']) for r in by_variant[v])} --seeds-for full {v} --epochs "
        f"{first['epochs']} --threads {threads}`"
        for v in tried
    )
    described = "; ".join(f"`{v}` {NORMALS_VARIANTS.get(v, 'n/a')}" for v in tried)
    sites = [TARGET_NAMES[k].replace(" test", "") for k in ABLATION_SITES]
    columns = ["variant", "seeds", *(f"Dice {s}" for s in sites)]
    columns += ["BUSI normals given a lesion, test", "val", "minutes a seed"]
    lines = [
        "## Against lesions on normal images (generated from `docs/results/normals/*.json`)",
        "",
        "The shipped segmenter draws a lesion on nearly every lesion-free image; 103 of the "
        "1,353 train images have none. Its soft Dice loss is flat there (``1 - 1 / (S + 1)`` "
        "for a predicted area S) and the pixel-wise BCE of a small blob is diluted over the "
        f"frame. Tried beside `full` (the shipped recipe's MAU-Net): {described}. Trained by "
        f"{commands}, on one machine, one after the other (a finished `full` seed is not "
        f"trained again): the ablations' short schedule ({first['size']}x{first['size']} "
        f"input, {first['epochs']} epochs), so compare the rows with each other. Dice on "
        "each site's test split at the network grid (mean over images with a lesion), mask "
        "threshold chosen on val by Dice; normals given a lesion: the share of BUSI's "
        "lesion-free images (14 in test, 14 in val) with any lesion left after the node's "
        "postprocessing; mean ± SD over seeds.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for variant, runs in by_variant.items():
        cells = [
            _seeds_cell([r["figures"].get(f"test/{site}", {}).get("dice") for r in runs], 3)
            for site in ABLATION_SITES
        ]
        for split in ("test", "val"):
            shares = [r["figures"].get(f"{split}/busi", {}).get("fp_rate_normal") for r in runs]
            cells.append(_seeds_cell([None if v is None else 100 * v for v in shares], 0, " %"))
        minutes = sorted({round(r["seconds"] / 60) for r in runs})
        spent = f"{minutes[0]}" if len(minutes) == 1 else f"{minutes[0]}–{minutes[-1]}"
        lines.append(
            f"| {variant} | {', '.join(str(r['seed']) for r in runs)} | {' | '.join(cells)} | "
            f"{spent} |"
        )
    return [*lines, "", _machines(records), ""]


def _seeds_cell(values: list[float | None], digits: int, unit: str = "") -> str:
    """``mean ± SD`` of the values that are there (one: the value alone; none: n/a)."""
    got = [float(v) for v in values if v is not None and not np.isnan(v)]
    if not got:
        return "n/a"
    if len(got) == 1:
        return f"{got[0]:.{digits}f}{unit}"
    return f"{np.mean(got):.{digits}f} ± {np.std(got, ddof=1):.{digits}f}{unit}"


def render_classifier_ablations(records: list[dict[str, Any]]) -> list[str]:
    """The classifier ablation table (`trainer.ablations --classifiers`): per variant and
    test site the AUC with its 95 % bootstrap interval, and the accuracy."""
    if not records:
        return []
    first = records[0]["settings"]
    lines = [
        "## Classifier ablations (generated from `docs/results/ablations/cls-*.json`)",
        "",
        f"Every variant trained by `python -m trainer.ablations --classifiers ...` on the "
        f"frozen `full` MAU-Net of the table above (same seed), {first['size']}x"
        f"{first['size']} input, {first['epochs_cls']} epochs (the dual-stage classifier: "
        f"{first['epochs_cls']} epochs of stage one, then its meta-classifier), "
        f"{first['augment']} augmentation, the default schedule. AUC on each site's test "
        "split (BUSI macro one-vs-rest, BUS-BRA malignant vs benign) with its 95 % bootstrap "
        "interval (one seed) or the mean ± SD over seeds, then the accuracy; uncalibrated. "
        "A short schedule: compare the rows with each other.",
        "",
        *_site_table_head("variant", "profile", "backbones", "seeds"),
    ]
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(records, key=lambda r: (r["variant"], r["seed"])):
        by_variant.setdefault(r["variant"], []).append(r)
    for variant, runs in by_variant.items():
        cells = [_auc_cell(runs, site) for site in ABLATION_SITES]
        backbones = runs[0]["settings"]["backbones"]
        profile = runs[0]["settings"].get("profile") or "n/a"
        lines.append(
            f"| {variant} | {profile} | {', '.join(backbones) if backbones else 'n/a'} | "
            f"{', '.join(str(r['seed']) for r in runs)} | {' | '.join(cells)} | "
            f"{runs[0]['seconds'] / 60:.0f} |"
        )
    return [*lines, "", _machines(records), ""]


def _site_table_head(*first: str) -> list[str]:
    """Header and rule of a table with columns `first`, one per ablation site, then the
    minutes of one seed."""
    sites = [TARGET_NAMES[k].replace(" test", "") for k in ABLATION_SITES]
    columns = [*first, *sites, "minutes (1 seed)"]
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def _auc_cell(runs: list[dict[str, Any]], site: str) -> str:
    """A classifier's test AUC at `site` over `runs` (seeds): with its 95 % interval for
    one, mean ± SD for several; then the (mean) accuracy."""
    got = [r["figures"].get(f"test/{site}") for r in runs]
    found = [g for g in got if g is not None and g["auc"] is not None]
    if not found:
        return "n/a"
    if len(found) == 1:
        f = found[0]
        return f"{_f(f['auc'])}{_ci(f['auc_ci95'])}, {f['accuracy']:.2f}"
    aucs = [g["auc"] for g in found]
    accuracy = float(np.mean([g["accuracy"] for g in found]))
    return f"{np.mean(aucs):.3f} ± {np.std(aucs, ddof=1):.3f}, {accuracy:.2f}"


def render_profiles(records: list[dict[str, Any]]) -> list[str]:
    """The two profiles of the dual-stage classifier side by side (``docs/results/profiles``,
    `trainer.ablations --classifiers dual-stage dual-stage-paper` on one frozen MAU-Net, in
    one session on one machine): parameters, test AUC and accuracy per site, minutes. The
    folder's segmentation records (the frozen MAU-Nets) are not rows."""
    records = [r for r in records if r.get("kind") == "classifier_ablation"]
    if not records:
        return []
    first = records[0]["settings"]
    segmenters = sorted({r["settings"]["segmenter"] for r in records})
    seeds = sorted({r["seed"] for r in records})
    several = len(seeds) > 1
    lines = [
        "## The two profiles of the dual-stage classifier (generated from "
        "`docs/results/profiles/*.json`)",
        "",
        f"`edge` and `paper` trained one after the other on the same frozen MAU-Net "
        f"{'for each seed ' if several else ''}({'; '.join(segmenters)}), the same split, "
        f"{first['size']}x{first['size']} input, "
        f"{first['epochs_cls']} epochs of stage one and {first['epochs_meta']} of the "
        f"meta-classifier, {first['augment']} augmentation, the default schedule: the "
        "classifier ablations' short schedule; for each seed `python -m trainer.ablations "
        "--out docs/results/profiles --variants full --seeds S --epochs 8 --classifiers "
        "dual-stage dual-stage-paper --threads 2` (its MAU-Net's record is the "
        "folder's `full-seedS.json`). AUC on each site's test split "
        + ("(mean ± SD over the seeds)" if several else "(95 % bootstrap interval)")
        + ", then the accuracy; uncalibrated. `paper` has the published widths "
        "(ResNet50V2, NASNet-A Large, heads of 1024) and no ImageNet weights: trained from "
        "scratch on 1,353 images for a few epochs, as here, it says how the published widths "
        "train on this machine, not what they reach with a GPU and the paper's schedule. "
        "The MAU-Nets were trained again for these pairs (a run reproduces on one machine "
        "with one thread count only), so the `edge` row differs from the classifier "
        "ablations' `dual-stage`: compare the two rows here with each other.",
        "",
        *_site_table_head("profile", "parameters", "seeds"),
    ]
    by_profile: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(records, key=lambda r: (r["settings"].get("profile") or "", r["seed"])):
        by_profile.setdefault(r["settings"].get("profile") or "n/a", []).append(r)
    for name, runs in by_profile.items():
        params = runs[0]["settings"].get("parameters")
        lines.append(
            f"| {name} | {f'{params / 1e6:.1f} M' if params else 'n/a'} | "
            f"{', '.join(str(r['seed']) for r in runs)} | "
            f"{' | '.join(_auc_cell(runs, site) for site in ABLATION_SITES)} | "
            f"{runs[0]['seconds'] / 60:.0f} |"
        )
    return [*lines, "", _machines(records), ""]
