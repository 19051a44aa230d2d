"""`fame-node evaluate`: run the installed bundle on a labelled data set and measure it.

The data set is described by a CSV in the format of ``shared/data/busi/manifest.csv``:
columns ``image``, ``label``, ``masks`` (``;``-separated, may be empty) and ``split``,
paths relative to the CSV. Images go through the node's own reader and `Analyzer`, so
the figures are those of the node as deployed (preprocessing from the manifest, the
configured thresholds, masks compared at each image's own resolution).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from appliance.analysis import Analyzer
from appliance.dataset import Case, DatasetError, read_dataset_manifest
from appliance.errors import InputError
from appliance.io.reader import read_file
from trainer.metrics import (
    ClassificationReport,
    SegmentationSummary,
    classification_report,
    dice,
    segmentation_summary,
)


@dataclass(frozen=True)
class EvaluationReport:
    dataset: str
    split: str | None
    site: str | None
    model: str
    backend: str
    n_cases: int
    skipped: list[dict[str, str]]
    seconds: float
    segmentation: SegmentationSummary
    classification: ClassificationReport
    # A fold-ensemble model's outline uncertainty (`uncertainty_figures`); None: one model.
    uncertainty: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_cases(manifest: Path, split: str | None, site: str | None = None) -> list[Case]:
    """The cases of `split` (all of them for None), of `site` only where given."""
    every = read_dataset_manifest(manifest)
    cases = [c for c in every if split is None or c.split == split]
    if not cases:
        splits = sorted({c.split for c in every})
        raise DatasetError(f"{manifest}: no rows with split {split!r}; splits present: {splits}")
    if site is not None:
        sites = sorted({c.site for c in cases if c.site})
        cases = [c for c in cases if c.site == site]
        if not cases:
            raise DatasetError(
                f"{manifest}: no rows of site {site!r} in split {split!r}; sites present: "
                f"{sites or 'none (the manifest has no site column)'}"
            )
    return cases


def _truth_mask(case: Case, shape: tuple[int, ...]) -> np.ndarray:
    union = np.zeros(shape, dtype=bool)
    for m in case.masks:
        with Image.open(m) as im:
            arr = np.asarray(im.convert("L")) > 0
        if arr.shape != shape:
            raise DatasetError(f"mask {m} is {arr.shape}, its image {case.image} is {shape}")
        union |= arr
    return union.astype(np.uint8)


@dataclass
class CaseOutputs:
    """What the node made of each readable case, in manifest order (skipped ones apart)."""

    preds: list[np.ndarray] = field(default_factory=list)  # the node's masks, image size
    truths: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)  # index into the model's classes
    probs: list[list[float]] = field(default_factory=list)
    ood_scores: list[float | None] = field(default_factory=list)  # where the model has one
    # A fold ensemble's disagreement per case (None: a single model).
    uncertainties: list[float | None] = field(default_factory=list)
    flagged_uncertain: list[bool] = field(default_factory=list)  # high_uncertainty raised
    skipped: list[dict[str, str]] = field(default_factory=list)


def analyse_cases(analyzer: Analyzer, cases: list[Case], *, max_frames: int = 1) -> CaseOutputs:
    """Run every case through the node's reader and `Analyzer` (first frame)."""
    classes = analyzer.classes
    out = CaseOutputs()
    for case in cases:
        try:
            loaded = read_file(case.image, max_frames=max_frames)
        except InputError as exc:
            out.skipped.append({"image": str(case.image), "reason": exc.reason})
            continue
        if loaded.meta.crop is not None:  # its truth mask is drawn on the uncropped image
            raise DatasetError(f"{case.image}: evaluation of cropped DICOM is not supported")
        frame = loaded.frames[0]
        result = analyzer.analyse([frame], loaded.meta.pixel_spacing_mm)[0]
        out.preds.append(result.findings.mask)
        out.truths.append(_truth_mask(case, frame.shape))
        out.labels.append(classes.index(case.label))
        out.probs.append([result.diagnosis.probabilities[c] for c in classes])
        out.ood_scores.append(result.ood_score)
        out.uncertainties.append(result.seg_uncertainty)
        out.flagged_uncertain.append("high_uncertainty" in result.diagnosis.flags)
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman rank correlation (ties share their mean rank); None below 3 pairs or
    where either side has no spread."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} and {len(y)} values: give pairs")
    if len(x) < 3:
        return None
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    ranks = np.empty(len(x))
    ranks[np.argsort(x, kind="stable")] = np.arange(len(x), dtype=np.float64)
    for value in np.unique(x):
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def uncertainty_figures(out: CaseOutputs) -> dict[str, Any] | None:
    """How a fold ensemble's outline uncertainty behaves on these cases: its median, the
    share flagged ``high_uncertainty``, and its Spearman correlation with each image's Dice
    error (1 - Dice of the node's mask, images with a lesion only). None for a model
    without the score."""
    if not out.uncertainties or any(u is None for u in out.uncertainties):
        return None
    u = np.array(out.uncertainties, dtype=np.float64)
    lesion = [k for k, t in enumerate(out.truths) if t.any()]
    error = [1.0 - dice(out.preds[k], out.truths[k]) for k in lesion]
    rho = spearman(list(u[lesion]), error)
    return {
        "n": len(u),
        "median": round(float(np.nanmedian(u)), 4),
        "flagged_high_uncertainty": round(float(np.mean(out.flagged_uncertain)), 4),
        "spearman_vs_dice_error": None if rho is None else round(rho, 4),
        "n_with_lesion": len(lesion),
    }


def evaluate(
    analyzer: Analyzer,
    manifest: Path,
    split: str | None = "test",
    *,
    site: str | None = None,
    max_frames: int = 1,
) -> EvaluationReport:
    cases = read_cases(manifest, split, site)
    classes = analyzer.classes
    unknown = sorted({c.label for c in cases} - set(classes))
    if unknown:
        raise DatasetError(f"{manifest}: labels {unknown} are not classes of the model {classes}")
    start = time.perf_counter()
    out = analyse_cases(analyzer, cases, max_frames=max_frames)
    if not out.labels:
        raise DatasetError(f"{manifest}: none of the {len(cases)} images could be read")
    return EvaluationReport(
        dataset=str(manifest),
        split=split,
        site=site,
        model=analyzer.bundle.version_label,
        backend=analyzer.backend.device,
        n_cases=len(out.labels),
        skipped=out.skipped,
        seconds=round(time.perf_counter() - start, 2),
        segmentation=segmentation_summary(out.preds, out.truths),
        classification=classification_report(out.labels, np.array(out.probs), classes),
        uncertainty=uncertainty_figures(out),
    )


def format_report(r: EvaluationReport) -> str:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}%"

    s, c = r.segmentation, r.classification
    lines = [
        f"model {r.model} on {r.backend}; {r.dataset} split={r.split}"
        f"{'' if r.site is None else f' site={r.site}'}: {r.n_cases} images "
        f"({len(r.skipped)} skipped) in {r.seconds:.1f}s",
        "",
        "segmentation (images with a lesion)",
        f"  Dice {pct(s.dice_lesion)}   IoU {pct(s.iou_lesion)}   "
        f"(all images: Dice {pct(s.dice_all)}, IoU {pct(s.iou_all)})",
        f"  lesion-free images given a lesion: {pct(s.false_positive_rate_normal)}",
        "",
        "classification",
        f"  accuracy {pct(c.accuracy)}   macro F1 {pct(c.macro_f1)}   "
        f"AUC {'n/a' if c.macro_auc is None else f'{c.macro_auc:.3f}'} ({c.auc_kind})",
        "",
        f"  {'class':<10}{'n':>5}{'sensitivity':>13}{'specificity':>13}{'AUC':>8}",
    ]
    for name, pc in c.per_class.items():
        auc = pc["auc"]
        lines.append(
            f"  {name:<10}{int(pc['support'] or 0):>5}{pct(pc['sensitivity']):>13}"
            f"{pct(pc['specificity']):>13}{'n/a' if auc is None else f'{auc:.3f}':>8}"
        )
    if r.uncertainty is not None:
        u = r.uncertainty
        rho = u["spearman_vs_dice_error"]
        lines += [
            "",
            "outline uncertainty (fold-ensemble disagreement, 0..1)",
            f"  median {u['median']:.3f}   flagged high_uncertainty "
            f"{pct(u['flagged_high_uncertainty'])}   Spearman vs Dice error "
            f"{'n/a' if rho is None else f'{rho:.3f}'} ({u['n_with_lesion']} images with a lesion)",
        ]
    lines += ["", "confusion matrix (rows: truth, columns: predicted)"]
    lines.append("  " + " " * 10 + "".join(f"{n[:9]:>10}" for n in c.classes))
    for name, row in zip(c.classes, c.confusion, strict=True):
        lines.append(f"  {name:<10}" + "".join(f"{v:>10}" for v in row))
    return "\n".join(lines)
