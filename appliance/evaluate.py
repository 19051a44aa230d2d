"""`fame-node evaluate`: run the installed bundle on a labelled data set and measure it.

The data set is described by a CSV in the format of ``shared/data/busi/manifest.csv``:
columns ``image``, ``label``, ``masks`` (``;``-separated, may be empty) and ``split``,
paths relative to the CSV. Images go through the node's own reader and `Analyzer`, so
the figures are those of the node as deployed (preprocessing from the manifest, the
configured thresholds, masks compared at each image's own resolution).
"""

from __future__ import annotations

import csv
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from appliance.analysis import Analyzer
from appliance.errors import FameNodeError, InputError
from appliance.io.reader import read_file
from trainer.metrics import (
    ClassificationReport,
    SegmentationSummary,
    classification_report,
    segmentation_summary,
)

REQUIRED_COLUMNS = ("image", "label", "masks", "split")


class DatasetError(FameNodeError):
    """The evaluation CSV or a file it names is unusable."""


@dataclass(frozen=True)
class Case:
    image: Path
    label: str
    masks: tuple[Path, ...]
    split: str


@dataclass(frozen=True)
class EvaluationReport:
    dataset: str
    split: str | None
    model: str
    backend: str
    n_cases: int
    skipped: list[dict[str, str]]
    seconds: float
    segmentation: SegmentationSummary
    classification: ClassificationReport

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_cases(manifest: Path, split: str | None) -> list[Case]:
    try:
        with manifest.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(
                    f"{manifest}: columns {missing} missing; expected at least "
                    f"{list(REQUIRED_COLUMNS)} (the format of shared/data/busi/manifest.csv)"
                )
            rows = list(reader)
    except OSError as exc:
        raise DatasetError(f"cannot read {manifest}: {exc.strerror}") from exc
    base = manifest.parent
    cases = []
    for row in rows:
        if row["split"] == "exclude" or (split is not None and row["split"] != split):
            continue
        masks = tuple(base / m for m in row["masks"].split(";") if m.strip())
        cases.append(Case(base / row["image"], row["label"], masks, row["split"]))
    if not cases:
        splits = sorted({r["split"] for r in rows})
        raise DatasetError(f"{manifest}: no rows with split {split!r}; splits present: {splits}")
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


def evaluate(
    analyzer: Analyzer, manifest: Path, split: str | None = "test", *, max_frames: int = 1
) -> EvaluationReport:
    cases = read_cases(manifest, split)
    classes = analyzer.classes
    unknown = sorted({c.label for c in cases} - set(classes))
    if unknown:
        raise DatasetError(f"{manifest}: labels {unknown} are not classes of the model {classes}")
    start = time.perf_counter()
    preds, truths, labels, probs = [], [], [], []
    skipped: list[dict[str, str]] = []
    for case in cases:
        try:
            loaded = read_file(case.image, max_frames=max_frames)
        except InputError as exc:
            skipped.append({"image": str(case.image), "reason": exc.reason})
            continue
        frame = loaded.frames[0]
        result = analyzer.analyse([frame], loaded.meta.pixel_spacing_mm)[0]
        if loaded.meta.crop is not None:
            raise DatasetError(f"{case.image}: evaluation of cropped DICOM is not supported")
        preds.append(result.findings.mask)
        truths.append(_truth_mask(case, frame.shape))
        labels.append(classes.index(case.label))
        probs.append([result.diagnosis.probabilities[c] for c in classes])
    if not labels:
        raise DatasetError(f"{manifest}: none of the {len(cases)} images could be read")
    return EvaluationReport(
        dataset=str(manifest),
        split=split,
        model=analyzer.bundle.version_label,
        backend=analyzer.backend.device,
        n_cases=len(labels),
        skipped=skipped,
        seconds=round(time.perf_counter() - start, 2),
        segmentation=segmentation_summary(preds, truths),
        classification=classification_report(labels, np.array(probs), classes),
    )


def format_report(r: EvaluationReport) -> str:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}%"

    s, c = r.segmentation, r.classification
    lines = [
        f"model {r.model} on {r.backend}; {r.dataset} split={r.split}: {r.n_cases} images "
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
    lines += ["", "confusion matrix (rows: truth, columns: predicted)"]
    lines.append("  " + " " * 10 + "".join(f"{n[:9]:>10}" for n in c.classes))
    for name, row in zip(c.classes, c.confusion, strict=True):
        lines.append(f"  {name:<10}" + "".join(f"{v:>10}" for v in row))
    return "\n".join(lines)
