"""`fame-node evaluate` on labelled data sets: phantoms (always) and BUSI (when present)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from appliance.phantom import PhantomSpec, make_phantom
from appliance.phantom_dicom import write_phantom_png
from tests.conftest import BUSI_DIR, BUSI_MANIFEST, needs_busi
from tests.e2e.nodeutil import node_env, run_cli


def _phantom_dataset(folder: Path) -> Path:
    rows = []
    for i, (lesion, label) in enumerate(
        [("ellipse", "benign"), ("lobulated", "malignant"), ("none", "normal")] * 2
    ):
        ph = make_phantom(PhantomSpec(lesion=lesion, seed=40 + i))  # type: ignore[arg-type]
        img = folder / "images" / f"p{i}.png"
        img.parent.mkdir(parents=True, exist_ok=True)
        write_phantom_png(img, ph)
        mask = folder / "masks" / f"p{i}_mask.png"
        mask.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ph.mask * 255).save(mask)
        rows.append(
            {
                "image": f"images/p{i}.png",
                "label": label,
                "masks": f"masks/p{i}_mask.png",
                "split": "test" if i < 5 else "train",
            }
        )
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["image", "label", "masks", "split"])
        w.writeheader()
        w.writerows(rows)
    return manifest


def test_evaluate_reports_every_figure_on_a_small_labelled_set(tmp_path: Path) -> None:
    manifest = _phantom_dataset(tmp_path / "data")
    proc = run_cli(node_env(tmp_path / "node"), "evaluate", "--manifest", str(manifest), "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["n_cases"] == 5 and r["split"] == "test"
    seg, cls = r["segmentation"], r["classification"]
    assert seg["n_with_lesion"] == 4  # p2 is the one normal image of the test split
    assert 0.0 <= seg["dice_lesion"] <= 1.0 and 0.0 <= seg["iou_lesion"] <= seg["dice_lesion"]
    assert sum(map(sum, cls["confusion"])) == 5
    assert np.array(cls["confusion"]).sum(axis=1).tolist() == [1, 2, 2]  # normal, benign, mal.
    for name in ("normal", "benign", "malignant"):
        assert set(cls["per_class"][name]) >= {"sensitivity", "specificity", "auc", "support"}
    human = run_cli(node_env(tmp_path / "node"), "evaluate", "--manifest", str(manifest))
    assert "confusion matrix" in human.stdout and "Dice" in human.stdout


def test_evaluate_names_a_missing_column_and_an_unknown_split(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("image,label\nx.png,benign\n")
    proc = run_cli(node_env(tmp_path / "node"), "evaluate", "--manifest", str(bad))
    assert proc.returncode == 1 and "columns ['masks', 'split'] missing" in proc.stderr
    manifest = _phantom_dataset(tmp_path / "data")
    proc = run_cli(
        node_env(tmp_path / "node"), "evaluate", "--manifest", str(manifest), "--split", "val"
    )
    assert proc.returncode == 1 and "no rows with split 'val'" in proc.stderr


@needs_busi
def test_evaluate_on_busi_benign_malignant_only_reports_malignant_vs_rest(tmp_path: Path) -> None:
    with BUSI_MANIFEST.open(newline="") as fh:
        test = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    rows = [r for r in test if r["label"] == "benign"][:6]
    rows += [r for r in test if r["label"] == "malignant"][:6]
    subset = tmp_path / "subset.csv"
    with subset.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["image", "label", "masks", "split"])
        w.writeheader()
        for r in rows:
            masks = ";".join(str(BUSI_DIR / m) for m in r["masks"].split(";") if m)
            w.writerow(
                {
                    "image": str(BUSI_DIR / r["image"]),
                    "label": r["label"],
                    "masks": masks,
                    "split": "test",
                }
            )
    proc = run_cli(node_env(tmp_path / "node"), "evaluate", "--manifest", str(subset), "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["n_cases"] == 12
    assert r["classification"]["auc_kind"] == "malignant vs rest"
    assert r["segmentation"]["n_with_lesion"] == 12


REPO = Path(__file__).resolve().parents[2]


@needs_busi
def test_evaluate_reproduces_the_shipped_bundles_published_busi_figures(tmp_path: Path) -> None:
    """`fame-node evaluate` on the BUSI test split gives the figures docs/RESULTS.md shows
    for the shipped bundle (its report in docs/results names the bundle and its files)."""
    manifest = json.loads((REPO / "models" / "default" / "manifest.json").read_text())
    label = f"{manifest['name']}@{manifest['version']}"
    reports = [
        json.loads(p.read_text())
        for p in sorted((REPO / "docs" / "results").glob("*.json"))
        if json.loads(p.read_text())["model"] == label
    ]
    assert reports, f"no report in docs/results for the shipped bundle {label}: measure it"
    published = reports[-1]["targets"]["busi"]
    proc = run_cli(
        node_env(tmp_path / "node"), "evaluate", "--manifest", str(BUSI_MANIFEST), "--json"
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["n_cases"] == published["n"]
    assert abs(got["segmentation"]["dice_lesion"] - published["segmentation"]["dice"]) < 5e-4
    auc = got["classification"]["macro_auc"]
    assert abs(auc - published["classification"]["auc"]) < 5e-4
