"""The figures of one bundle on every site's test split, with 95 % bootstrap intervals.

Each image goes through the node's own reader and `Analyzer` (`appliance.evaluate`), so
these are the figures of the node as deployed, masks compared at each image's own size.
Targets: the BUSI test split and the test split of each BUS-BRA scanner (there AUC is
malignant vs benign: BUS-BRA has no normal class). Intervals: 2.5 / 97.5 percentiles over
`--boot` resamples of the images (seeded).

    python -m trainer.site_report --bundle models/default --out docs/results/default.json

The bundle is loaded with its checksums verified (`appliance.bundle.load_bundle`): a bundle
this trainer just wrote, before it is signed and installed; run on the CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from appliance.analysis import Analyzer
from appliance.bundle import load_bundle
from appliance.config import RuntimeConfig, ThresholdsConfig
from appliance.evaluate import CaseOutputs, analyse_cases, read_cases, uncertainty_figures
from appliance.runtime import create_backend
from trainer.calibration import expected_calibration_error, reliability_bins
from trainer.metrics import classification_report, dice, hd95, iou, roc_auc, roc_curve

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BUSBRA_SITES = ("logiq7", "aplio300", "usystems")


def bootstrap_ci(
    n: int, statistic: Callable[[np.ndarray], float | None], boots: int, seed: int = 0
) -> list[float] | None:
    """[low, high] of `statistic` over `boots` resamples of the indices 0..n-1."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(boots):
        v = statistic(rng.integers(0, n, n))
        if v is not None and np.isfinite(v):
            values.append(v)
    if len(values) < boots // 2:
        return None
    return [
        round(float(np.percentile(values, 2.5)), 4),
        round(float(np.percentile(values, 97.5)), 4),
    ]


def figures(out: CaseOutputs, classes: Sequence[str], boots: int) -> dict[str, Any]:
    """Segmentation and classification figures of one target, with bootstrap intervals."""
    d = np.array([dice(p, t) for p, t in zip(out.preds, out.truths, strict=True)])
    j = np.array([iou(p, t) for p, t in zip(out.preds, out.truths, strict=True)])
    has = np.array([bool(t.any()) for t in out.truths])
    h = [hd95(p, t) for p, t, k in zip(out.preds, out.truths, has, strict=True) if k]
    h_ok = [x for x in h if x is not None]
    labels, probs = np.array(out.labels), np.array(out.probs)
    report = classification_report(list(labels), probs, classes)

    def mean_dice(idx: np.ndarray) -> float | None:
        sel = idx[has[idx]]
        return float(d[sel].mean()) if len(sel) else None

    def auc(idx: np.ndarray) -> float | None:
        return classification_report(list(labels[idx]), probs[idx], classes).macro_auc

    empty = ~has
    fp_normal = [bool(p.any()) for p, e in zip(out.preds, empty, strict=True) if e]
    missed = sum(1 for p, k in zip(out.preds, has, strict=True) if k and not p.any())
    return {
        "n": len(labels),
        "n_with_lesion": int(has.sum()),
        "skipped": len(out.skipped),
        "segmentation": {
            "dice": round(float(d[has].mean()), 4) if has.any() else None,
            "dice_ci95": bootstrap_ci(len(d), mean_dice, boots),
            "iou": round(float(j[has].mean()), 4) if has.any() else None,
            "hd95_px_median": round(float(np.median(h_ok)), 2) if h_ok else None,
            "lesions_missed": missed,
            "false_positive_rate_normal": (
                round(float(np.mean(fp_normal)), 4) if fp_normal else None
            ),
        },
        "classification": {
            "accuracy": round(report.accuracy, 4),
            "macro_f1": round(report.macro_f1, 4),
            "auc": None if report.macro_auc is None else round(report.macro_auc, 4),
            "auc_ci95": bootstrap_ci(len(labels), auc, boots),
            "auc_kind": report.auc_kind,
            # Of the calibrated probabilities the node shows (15 equal-width bins).
            "ece": round(expected_calibration_error(probs, labels), 4),
            "reliability": reliability_bins(probs, labels, bins=10),
            "per_class": report.per_class,
            "confusion": report.confusion,
            "roc": roc_curves(probs, labels, classes, report.auc_kind),
        },
    }


def roc_curves(
    probs: NDArray[Any], labels: NDArray[Any], classes: Sequence[str], auc_kind: str
) -> dict[str, dict[str, list[float]]]:
    """The ROC curves behind the reported AUC: one per class one-vs-rest for a macro AUC,
    the positive class's alone for a two-class AUC ("malignant vs rest")."""
    wanted = [c for c in classes if auc_kind.startswith(f"{c} vs rest")] or list(classes)
    out: dict[str, dict[str, list[float]]] = {}
    for name in wanted:
        k = list(classes).index(name)
        curve = roc_curve(probs[:, k], labels == k)
        if curve is not None:
            out[name] = {
                "fpr": [round(v, 4) for v in curve[0]],
                "tpr": [round(v, 4) for v in curve[1]],
            }
    return out


def ood_figures(
    analyzer: Analyzer, inside: Sequence[float | None], boots: int
) -> dict[str, Any] | None:
    """How the out-of-distribution score separates the test images (`inside`) from the
    ultrasound frames of pydicom-data (obstetric, abdominal, cardiac: no breast)."""
    if analyzer.ood_threshold is None or any(s is None for s in inside):
        return None
    from appliance.io.sample_data import ultrasound_sample_frames

    outside: list[float] = []
    per_file: list[float] = []
    for frames in ultrasound_sample_frames(max_frames=16):
        analysed = analyzer.analyse(frames, None)
        frame_scores = [float(r.ood_score) for r in analysed if r.ood_score is not None]
        outside += frame_scores
        per_file.append(float(np.median(frame_scores)))
    if not outside:
        return None
    ins = np.array(inside, dtype=np.float64)
    out = np.array(outside)
    scores = np.concatenate([ins, out])
    is_out = np.concatenate([np.zeros(len(ins), bool), np.ones(len(out), bool)])

    def auroc(idx: np.ndarray) -> float | None:
        return roc_auc(scores[idx], is_out[idx])

    t = analyzer.ood_threshold
    return {
        "threshold": t,
        "n_in_distribution": len(ins),
        "n_out_frames": len(out),
        "n_out_files": len(per_file),
        "auroc_frames": roc_auc(scores, is_out),
        "auroc_frames_ci95": bootstrap_ci(len(scores), auroc, boots),
        "auroc_files": roc_auc(
            np.concatenate([ins, per_file]),
            np.concatenate([np.zeros(len(ins), bool), np.ones(len(per_file), bool)]),
        ),
        "in_distribution_flagged": flagged_share(list(ins), t),
        "out_frames_flagged": round(float(np.mean(out > t)), 4),
        "out_files_flagged_median_frame": round(float(np.mean(np.array(per_file) > t)), 4),
    }


def phantom_figures(analyzer: Analyzer) -> dict[str, Any] | None:
    """Which of the phantoms a shipped model must flag out of distribution
    (`appliance.ood_phantoms`, the test tests/e2e/test_ood_shipped.py) this bundle lets
    through to a diagnosis: a candidate with any is not shippable."""
    from appliance.ood_phantoms import check_phantoms

    check = check_phantoms(analyzer)
    return None if check is None else check.to_dict()


def flagged_share(scores: Sequence[float | None], threshold: float | None) -> float | None:
    """The share of `scores` above the OOD `threshold` (None: no threshold, or a model
    without the score)."""
    t = threshold
    if t is None or not scores or any(s is None for s in scores):
        return None
    return round(float(np.mean(np.array(scores, dtype=np.float64) > t)), 4)


def targets(busi: Path, busbra: Path) -> list[tuple[str, Path, str | None]]:
    """(name, manifest, site) of every test split present on this machine."""
    found: list[tuple[str, Path, str | None]] = []
    if busi.is_file():
        found.append(("busi", busi, None))
    if busbra.is_file():
        found += [(f"busbra-{s}", busbra, s) for s in BUSBRA_SITES]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.site_report", description=__doc__)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--busi", type=Path, default=SHARED / "busi" / "manifest.csv")
    parser.add_argument("--busbra", type=Path, default=SHARED / "busbra" / "manifest.csv")
    parser.add_argument("--split", default="test")
    parser.add_argument("--boot", type=int, default=1000, help="bootstrap resamples")
    a = parser.parse_args(argv)
    bundle = load_bundle(a.bundle)
    backend = create_backend(bundle, RuntimeConfig(backend="onnxruntime-cpu"))
    analyzer = Analyzer(bundle, backend, ThresholdsConfig())
    found = targets(a.busi, a.busbra)
    if not found:
        raise SystemExit(f"no data: neither {a.busi} nor {a.busbra} exists")
    result: dict[str, Any] = {
        "model": bundle.version_label,
        "bundle_files": dict(bundle.manifest.files),
        "seed": bundle.manifest.training.get("seed"),  # which training run (results_doc)
        "split": a.split,
        "measured": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or 'CPU'}, ONNX Runtime CPU",
        "bootstrap_resamples": a.boot,
        "targets": {},
    }
    inside: list[float | None] = []
    for name, manifest, site in found:
        t0 = time.perf_counter()
        out = analyse_cases(analyzer, read_cases(manifest, a.split, site))
        inside += out.ood_scores
        result["targets"][name] = figures(out, analyzer.classes, a.boot)
        # A fold-ensemble bundle's outline uncertainty vs its Dice error (None: one model).
        result["targets"][name]["seg_uncertainty"] = uncertainty_figures(out)
        # This scanner's breast images the node would flag out_of_distribution.
        result["targets"][name]["ood_flagged"] = flagged_share(
            out.ood_scores, analyzer.ood_threshold
        )
        result["targets"][name]["seconds"] = round(time.perf_counter() - t0, 1)
        seg, cls = (
            result["targets"][name]["segmentation"],
            result["targets"][name]["classification"],
        )
        print(f"{name}: n={len(out.labels)} Dice {seg['dice']} AUC {cls['auc']}", flush=True)
    result["out_of_distribution"] = ood_figures(analyzer, inside, a.boot)
    print(f"out of distribution: {result['out_of_distribution']}", flush=True)
    phantoms = result["phantoms"] = phantom_figures(analyzer)
    if phantoms is not None and phantoms["missed"]:
        print(
            f"warning: {len(phantoms['missed'])} of {phantoms['n']} ultrasound phantoms pass the "
            "out-of-distribution flag: this bundle fails tests/e2e/test_ood_shipped.py and "
            f"must not ship ({phantoms['missed']})",
            flush=True,
        )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
