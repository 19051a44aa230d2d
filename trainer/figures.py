"""The confusion matrix, ROC curves and reliability diagram of a `trainer.site_report` JSON,
as one PNG per test set, drawn from the JSON's own numbers (nothing is recomputed here).

    python -m trainer.figures --report docs/results/fame-node-multisite-0.2.1.json \\
        --out docs/results/figures

matplotlib (the ``train`` extra) draws them with its non-interactive Agg backend, so no
display and no Qt binding is touched.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: never a GUI backend (the GUI's PyQt6 is separate)

import matplotlib.pyplot as plt


def render_target(
    name: str, target: dict[str, Any], classes: Sequence[str], out: Path, title: str
) -> Path:
    """One PNG with the three panels of `target` (a ``targets`` entry of the report)."""
    c = target["classification"]
    fig, (ax_cm, ax_roc, ax_rel) = plt.subplots(1, 3, figsize=(13.5, 4.2), dpi=90)
    fig.suptitle(f"{title}: n = {target['n']}", fontsize=11)

    cm = c["confusion"]
    ax_cm.imshow(cm, cmap="Blues")
    top = max(max(row) for row in cm) or 1
    for i, row in enumerate(cm):
        for j, v in enumerate(row):
            colour = "white" if v > top / 2 else "black"
            ax_cm.text(j, i, str(v), ha="center", va="center", color=colour)
    ax_cm.set_xticks(range(len(classes)), classes)
    ax_cm.set_yticks(range(len(classes)), classes)
    ax_cm.set_xlabel("predicted")
    ax_cm.set_ylabel("truth")
    ax_cm.set_title(f"confusion (accuracy {c['accuracy']:.3f})", fontsize=10)

    for cls, curve in c.get("roc", {}).items():
        auc = c["per_class"][cls]["auc"]
        label = cls if auc is None else f"{cls} (AUC {auc:.3f})"
        ax_roc.plot(curve["fpr"], curve["tpr"], label=label, linewidth=1.5)
    ax_roc.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax_roc.set_xlabel("false-positive rate")
    ax_roc.set_ylabel("true-positive rate")
    ax_roc.set_title(f"ROC ({c['auc_kind']})", fontsize=10)
    ax_roc.legend(loc="lower right", fontsize=8)
    ax_roc.set_xlim(0, 1)
    ax_roc.set_ylim(0, 1.01)

    bins = [b for b in c["reliability"] if b["n"] > 0]
    centres = [(b["low"] + b["high"]) / 2 for b in bins]
    width = c["reliability"][0]["high"] - c["reliability"][0]["low"]
    ax_rel.bar(
        centres, [b["accuracy"] for b in bins], width=width * 0.9, alpha=0.7, label="accuracy"
    )
    ax_rel.plot(
        [b["confidence"] for b in bins],
        [b["accuracy"] for b in bins],
        "o",
        color="black",
        markersize=3,
        label="bin mean confidence",
    )
    for x, b in zip(centres, bins, strict=True):
        ax_rel.text(x, 0.02, str(b["n"]), ha="center", fontsize=7)
    ax_rel.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ece = c.get("ece")
    ax_rel.set_title(
        "reliability (calibrated)" + ("" if ece is None else f", ECE {ece:.3f}"), fontsize=10
    )
    ax_rel.set_xlabel("top-class confidence (bin counts at the foot)")
    ax_rel.set_ylabel("accuracy")
    ax_rel.set_xlim(0, 1)
    ax_rel.set_ylim(0, 1.01)
    ax_rel.legend(loc="upper left", fontsize=8)

    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def render_report(report: Path, out: Path, names: dict[str, str] | None = None) -> list[Path]:
    """A PNG per test set of the report; returns their paths (``<report stem>-<target>``)."""
    data = json.loads(report.read_text(encoding="utf-8"))
    classes = ["normal", "benign", "malignant"]
    written = []
    for key, target in data["targets"].items():
        if "roc" not in target["classification"]:
            raise SystemExit(
                f"{report}: no ROC points for {key}; measure again with "
                "python -m trainer.site_report (this report predates them)"
            )
        title = f"{data['model']} on {(names or {}).get(key, key)}"
        written.append(render_target(f"{report.stem}-{key}", target, classes, out, title))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.figures", description=__doc__)
    parser.add_argument("--report", type=Path, required=True, help="site_report JSON")
    parser.add_argument("--out", type=Path, default=Path("docs/results/figures"))
    a = parser.parse_args(argv)
    from trainer.results_doc import TARGET_NAMES

    for path in render_report(a.report, a.out, TARGET_NAMES):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
