"""The ablation runner (`trainer.ablations`) and its table in RESULTS.md (`trainer.results_doc`)."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tests.trainer.test_train import write_tiny_busi
from trainer import ablations
from trainer.data import ArraySet
from trainer.results_doc import render_ablations


def _tiny_busbra(root: Path) -> Path:
    """A BUS-BRA-like manifest: the tiny BUSI folder with a ``site`` column (three scanners)."""
    manifest = write_tiny_busi(root, per_class=4)
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        row["site"] = ("aplio300", "logiq7", "usystems")[i % 3]
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*rows[0].keys()])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def test_by_site_cuts_the_split_per_scanner(tmp_path: Path) -> None:
    names = ("busi/a.png", "busbra/images/1.png", "busbra/images/2.png", "busi/b.png")
    arrays = ArraySet(
        images=np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 2, 2), np.float32),
        masks=np.zeros((4, 2, 2), np.uint8),
        labels=np.array([0, 1, 2, 1]),
        names=names,
    )
    sites = {"busbra/images/1.png": "logiq7", "busbra/images/2.png": "aplio300"}
    cut = ablations.by_site(arrays, sites)
    assert sorted(cut) == ["busbra-aplio300", "busbra-logiq7", "busi"]
    assert cut["busi"].names == ("busi/a.png", "busi/b.png")
    assert list(cut["busi"].images[:, 0, 0]) == [0.0, 3.0]
    assert cut["busbra-aplio300"].labels.tolist() == [2]


def test_measure_scores_a_perfect_and_an_empty_prediction() -> None:
    masks = np.zeros((3, 32, 32), np.uint8)
    masks[0, 8:20, 8:20] = 1
    masks[1, 4:16, 10:30] = 1
    arrays = ArraySet(
        np.zeros((3, 32, 32), np.float32), masks, np.array([1, 2, 0]), ("a", "b", "c")
    )
    perfect = ablations.measure(masks.astype(np.float32), arrays, 0.5, 4)
    assert perfect["dice"] == 1.0 and perfect["n_lesion"] == 2 and perfect["fp_rate_normal"] == 0
    empty = ablations.measure(np.zeros((3, 32, 32), np.float32), arrays, 0.5, 4)
    assert empty["dice"] == 0.0


def test_a_variant_runs_end_to_end_writes_its_record_and_is_skipped_after(tmp_path: Path) -> None:
    busi = write_tiny_busi(tmp_path / "busi", per_class=4)
    busbra = _tiny_busbra(tmp_path / "busbra")
    out = tmp_path / "out"
    argv = [
        "--out", str(out), "--busi", str(busi), "--busbra", str(busbra),
        "--variants", "no-attention", "presence-loss", "normals-x4", "--epochs", "1",
        "--size", "32",
        "--work-dir", str(tmp_path / "work"), "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    assert ablations.main(argv) == 0
    record = json.loads((out / "no-attention-seed1.json").read_text())
    assert record["settings"]["channel_attention"] is False
    assert record["settings"]["spatial_attention"] is False
    assert record["settings"]["trained_on"] == ["busi", "busbra"]
    assert {"test/busi", "test/busbra-logiq7", "test/busbra-aplio300"} <= set(record["figures"])
    assert record["settings"]["presence_weight"] == 0.0
    presence = json.loads((out / "presence-loss-seed1.json").read_text())
    assert presence["settings"]["presence_weight"] == 1.0
    assert presence["settings"]["channel_attention"] is True
    assert 0.0 <= presence["figures"]["val/busi"]["fp_rate_normal"] <= 1.0
    repeated = json.loads((out / "normals-x4-seed1.json").read_text())
    assert repeated["settings"]["normal_repeat"] == 4
    assert (record["settings"]["normal_repeat"], presence["settings"]["normal_repeat"]) == (1, 1)
    mtime = (out / "no-attention-seed1.json").stat().st_mtime_ns
    assert ablations.main(argv) == 0  # finished: skipped, not retrained
    assert (out / "no-attention-seed1.json").stat().st_mtime_ns == mtime


def _record(variant: str, seed: int, dice: float) -> dict[str, object]:
    settings = {
        "size": 64, "epochs": 8, "base_width": 16, "optimizer": "AdamW", "batch_size": 16,
        "augment": "site-shift", "trained_on": ["busi", "busbra"],
    }  # fmt: skip
    site = {"dice": dice, "dice_ci95": [dice - 0.1, dice + 0.1]}
    return {
        "variant": variant,
        "seed": seed,
        "settings": settings,
        "figures": {"test/busi": site},
        "seconds": 600.0,
        "machine": "x86_64 CPU",
    }


def test_render_ablations_mean_sd_over_seeds_and_ci_for_one() -> None:
    lines = render_ablations(
        [_record("full", 1, 0.70), _record("full", 2, 0.72), _record("no-attention", 1, 0.6)]
    )
    text = "\n".join(lines)
    assert "| full | busi + busbra | 1, 2 | 0.710 ± 0.014 |" in text
    assert "| no-attention | busi + busbra | 1 | 0.600 (0.500–0.700) |" in text
    assert render_ablations([]) == []


def test_classifier_variants_train_on_the_restored_full_segmenter(tmp_path: Path) -> None:
    busi = write_tiny_busi(tmp_path / "busi", per_class=4)
    busbra = _tiny_busbra(tmp_path / "busbra")
    out = tmp_path / "out"
    common = [
        "--out", str(out), "--busi", str(busi), "--busbra", str(busbra), "--size", "32",
        "--epochs", "1", "--work-dir", str(tmp_path / "work"),
        "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    with pytest.raises(SystemExit, match="the full MAU-Net of seed 1 is not trained"):
        ablations.main([*common, "--variants", "no-attention", "--classifiers", "preact-resnet"])
    argv = [
        *common, "--variants", "full", "--classifiers", "dual-stage-nasnet", "preact-resnet",
        "--epochs-cls", "1", "--epochs-meta", "1",
    ]  # fmt: skip
    assert ablations.main(argv) == 0
    full = json.loads((out / "full-seed1.json").read_text())
    nasnet = json.loads((out / "cls-dual-stage-nasnet-seed1.json").read_text())
    resnet = json.loads((out / "cls-preact-resnet-seed1.json").read_text())
    assert nasnet["settings"]["backbones"] == ["nasnet"]
    assert resnet["settings"]["classifier"] == "preact-resnet"
    assert resnet["settings"]["backbones"] is None
    for record in (nasnet, resnet):
        assert record["kind"] == "classifier_ablation"
        test = record["figures"]["test/busi"]
        assert test["n"] == 2 and 0.0 <= test["accuracy"] <= 1.0  # the tiny test split
        assert "vs rest" in test["auc_kind"]
    assert full["variant"] == "full"


def test_render_classifier_ablations_shows_auc_with_interval_and_accuracy() -> None:
    from trainer.results_doc import render_classifier_ablations

    settings = {
        "size": 64, "epochs_cls": 6, "augment": "site-shift", "backbones": ["nasnet"],
        "profile": "edge",
    }  # fmt: skip
    site = {"auc": 0.71, "auc_ci95": [0.6, 0.8], "accuracy": 0.55}
    record = {
        "variant": "dual-stage-nasnet", "seed": 1, "settings": settings,
        "figures": {"test/busi": site}, "seconds": 120.0, "machine": "x86_64 CPU",
    }  # fmt: skip
    text = "\\n".join(render_classifier_ablations([record]))
    assert "| dual-stage-nasnet | edge | nasnet | 1 | 0.710 (0.600–0.800), 0.55 | n/a |" in text
    second = {**record, "seed": 2, "figures": {"test/busi": {**site, "auc": 0.73}}}
    text = "\n".join(render_classifier_ablations([record, second]))
    assert "| dual-stage-nasnet | edge | nasnet | 1, 2 | 0.720 ± 0.014, 0.55 | n/a |" in text
    older = {**record, "settings": {k: v for k, v in settings.items() if k != "profile"}}
    assert "| dual-stage-nasnet | n/a | nasnet |" in "\n".join(
        render_classifier_ablations([older])
    )  # a record written before the profile was recorded
    assert render_classifier_ablations([]) == []


def test_classifier_variants_are_edge_unless_they_name_the_paper_profile(tmp_path: Path) -> None:
    args = argparse.Namespace(
        out=tmp_path / "out", work_dir=tmp_path / "work", cache_dir=tmp_path / "cache",
        busi=write_tiny_busi(tmp_path / "busi", per_class=1),
        busbra=_tiny_busbra(tmp_path / "busbra"), size=32, threads=1, device="cpu", epochs=1,
        epochs_cls=2, epochs_meta=1, acgan=None,
    )  # fmt: skip
    seg_cfg = ablations._seg_config("full", 1, args, [args.busi, args.busbra], {})
    paper = ablations.classifier_variant_config("dual-stage-paper", 1, args, seg_cfg)
    edge = ablations.classifier_variant_config("dual-stage-nasnet", 1, args, seg_cfg)
    assert (paper.classifier, paper.profile) == ("dual-stage", "paper")
    assert tuple(paper.backbones) == ("resnet50v2", "nasnet", "maunet-encoder")
    assert (edge.profile, tuple(edge.backbones)) == ("edge", ("nasnet",))
    assert paper.work_dir == tmp_path / "work" / "cls-dual-stage-paper-seed1"
    with pytest.raises(SystemExit, match="needs --acgan"):
        ablations.classifier_variant_config("dual-stage-acgan", 1, args, seg_cfg)


def test_render_profiles_puts_edge_and_paper_side_by_side() -> None:
    from trainer.results_doc import render_profiles

    def record(profile: str, params: int, auc: float) -> dict[str, object]:
        settings = {
            "size": 64, "epochs_cls": 6, "epochs_meta": 4, "augment": "site-shift",
            "profile": profile, "parameters": params,
            "segmenter": "full MAU-Net, seed 1 (8 epochs), frozen",
        }  # fmt: skip
        site = {"auc": auc, "auc_ci95": [auc - 0.1, auc + 0.1], "accuracy": 0.5}
        return {
            "kind": "classifier_ablation", "variant": f"dual-stage-{profile}", "seed": 1,
            "settings": settings, "figures": {"test/busi": site}, "seconds": 600.0,
            "machine": "x86_64 CPU",
        }  # fmt: skip

    segmenter = {"kind": "segmentation_ablation", "variant": "full", "seed": 1}
    text = "\n".join(
        render_profiles(
            [record("paper", 124_000_000, 0.6), segmenter, record("edge", 3_400_000, 0.7)]
        )
    )
    assert text.index("| edge | 3.4 M | 1 | 0.700 (0.600–0.800), 0.50 |") < text.index(
        "| paper | 124.0 M | 1 | 0.600 (0.500–0.700), 0.50 |"
    )
    assert "full MAU-Net, seed 1 (8 epochs), frozen" in text
    assert "(95 % bootstrap interval)" in text and "for each seed (" not in text
    second = [
        {**r, "seed": 2, "figures": {"test/busi": {"auc": 0.8, "accuracy": 0.6}}}
        for r in (record("paper", 124_000_000, 0.6), record("edge", 3_400_000, 0.7))
    ]
    text = "\n".join(
        render_profiles(
            [record("paper", 124_000_000, 0.6), record("edge", 3_400_000, 0.7), *second]
        )
    )
    assert "| edge | 3.4 M | 1, 2 | 0.750 ± 0.071, 0.55 |" in text
    assert "(mean ± SD over the seeds)" in text and "for each seed (" in text
    assert render_profiles([]) == [] and render_profiles([segmenter]) == []


def test_render_normals_sets_each_variant_beside_the_shipped_recipe() -> None:
    from trainer.results_doc import render_normals

    def record(variant: str, seed: int, dice: float, fp_test: float) -> dict[str, object]:
        settings = {"size": 64, "epochs": 8}
        return {
            "variant": variant, "seed": seed, "settings": settings,
            "figures": {
                "test/busi": {"dice": dice, "fp_rate_normal": fp_test},
                "val/busi": {"dice": dice, "fp_rate_normal": 1.0},
                "test/busbra-logiq7": {"dice": 0.8, "fp_rate_normal": float("nan")},
            },
            "seconds": 180.0, "machine": "x86_64 CPU, 2 thread(s), load average 2.0 at the end",
        }  # fmt: skip

    records = [
        record("presence-loss", 1, 0.71, 0.5), record("presence-loss", 2, 0.69, 0.3),
        record("full", 1, 0.70, 1.0), record("full", 2, 0.72, 0.9),
        {**record("normals-x4", 1, 0.68, 0.6), "seconds": 1150.0},
        record("normals-x4", 2, 0.68, 0.6),
    ]  # fmt: skip
    text = "\n".join(render_normals(records))
    assert (
        "--variants full presence-loss --seeds 1 2 --seeds-for full presence-loss --epochs 8 "
        "--threads 2`" in text
    )
    assert "--variants full normals-x4 --seeds 1 2 --seeds-for full normals-x4" in text
    assert "`normals-x4` draws each lesion-free training image 4 times" in text
    full = "| full | 1, 2 | 0.710 ± 0.014 | 0.800 ± 0.000 | n/a | n/a | 95 ± 7 % | 100 ± 0 % | 3 |"
    presence = "| presence-loss | 1, 2 | 0.700 ± 0.014 | 0.800 ± 0.000 | n/a | n/a | 40 ± 14 % |"
    assert text.index(full) < text.index(presence)  # the shipped recipe's row first
    assert (
        "| normals-x4 | 1, 2 | 0.680 ± 0.000 | 0.800 ± 0.000 | n/a | n/a | 60 ± 0 % | 100 ± 0 % "
        "| 3–19 |" in text
    )
    assert render_normals([]) == []
