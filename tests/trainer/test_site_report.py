"""The per-site report: figures and bootstrap intervals from the node's own outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from appliance.evaluate import CaseOutputs
from trainer.site_report import bootstrap_ci, figures, flagged_share, phantom_figures

CLASSES = ("normal", "benign", "malignant")


def _case(out: CaseOutputs, label: int, truth_box: bool, shift: int, p_mal: float) -> None:
    truth = np.zeros((40, 40), np.uint8)
    pred = np.zeros((40, 40), np.uint8)
    if truth_box:
        truth[10:30, 10:30] = 1
        pred[10:30, 10 + shift : 30 + shift] = 1
    out.preds.append(pred)
    out.truths.append(truth)
    out.labels.append(label)
    out.probs.append([0.0, 1.0 - p_mal, p_mal])


def test_figures_of_a_benign_malignant_site() -> None:
    out = CaseOutputs()
    for i in range(10):
        _case(out, 1, True, 0, 0.1 + 0.01 * i)  # benign, perfect masks, low p(malignant)
        _case(out, 2, True, 2, 0.8 + 0.01 * i)  # malignant, masks 2 px off, high p
    fig = figures(out, CLASSES, boots=200)
    seg, cls = fig["segmentation"], fig["classification"]
    assert fig["n"] == 20 and fig["n_with_lesion"] == 20
    assert 0.9 < seg["dice"] < 1.0 and seg["false_positive_rate_normal"] is None
    low, high = seg["dice_ci95"]
    assert low <= seg["dice"] <= high
    assert cls["auc"] == 1.0 and cls["auc_kind"] == "malignant vs rest"
    assert seg["hd95_px_median"] is not None and seg["hd95_px_median"] <= 2.0


def test_bootstrap_interval_narrows_with_more_data_and_is_none_when_undefined() -> None:
    rng = np.random.default_rng(0)
    small, large = rng.normal(size=20), rng.normal(size=2000)
    ci_small = bootstrap_ci(20, lambda idx: float(small[idx].mean()), 300)
    ci_large = bootstrap_ci(2000, lambda idx: float(large[idx].mean()), 300)
    assert ci_small is not None and ci_large is not None
    assert ci_large[1] - ci_large[0] < (ci_small[1] - ci_small[0]) / 4
    assert bootstrap_ci(5, lambda idx: None, 100) is None


def test_results_doc_renders_every_target_from_the_json(tmp_path: Path) -> None:
    import json

    from trainer.results_doc import main

    out = CaseOutputs()
    for i in range(6):
        _case(out, 1, True, 0, 0.2 + 0.01 * i)
        _case(out, 2, True, 1, 0.7 + 0.01 * i)
    data = {
        "model": "fame-node-test@1",
        "measured": "2026-12-01T00:00:00+00:00",
        "machine": "x86_64 CPU",
        "split": "test",
        "bootstrap_resamples": 50,
        "targets": {
            "busbra-aplio300": {**figures(out, CLASSES, boots=50), "ood_flagged": 0.25},
            "busbra-logiq7": figures(out, CLASSES, boots=50),  # a report without the share
        },
        "out_of_distribution": None,
    }
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "run.json").write_text(json.dumps(data))
    main(["--results", str(tmp_path / "results"), "--out", str(tmp_path / "R.md")])
    text = (tmp_path / "R.md").read_text()
    dice = data["targets"]["busbra-aplio300"]["segmentation"]["dice"]
    assert "BUS-BRA Aplio 300 test | 12 |" in text and f"{dice:.3f}" in text
    assert "malignant vs rest" in text
    assert "| 25.0 % |" in text and "| n/a |" in text


def test_the_share_of_a_sites_images_over_the_ood_threshold() -> None:
    assert flagged_share([0.5, 1.5, 2.5, 3.5], 2.0) == 0.5
    assert flagged_share([0.5, 2.0], 2.0) == 0.0  # at the threshold: not flagged, as the node
    assert flagged_share([0.5, 1.0], None) is None  # a bundle without a threshold
    assert flagged_share([0.5, None], 2.0) is None  # a model without the score
    assert flagged_share([], 2.0) is None


def test_the_seeds_table_gives_mean_and_sd_over_the_seeds_reports() -> None:
    from trainer.results_doc import render_seeds

    reports = []
    for seed, shift in ((2028, 2), (2026, 0), (2027, 1)):
        out = CaseOutputs()
        for i in range(6):
            _case(out, 1, True, shift, 0.2 + 0.01 * i)
            _case(out, 2, True, shift, 0.7 + 0.01 * i)
        target = {**figures(out, CLASSES, boots=20), "ood_flagged": 0.05 * shift}
        reports.append({"model": f"m@{seed}", "seed": seed, "targets": {"busi": target}})
    text = "\n".join(render_seeds(reports))
    dice = [r["targets"]["busi"]["segmentation"]["dice"] for r in reports]
    assert len(set(dice)) == 3  # the seeds differ, so the SD is not zero
    assert f"{np.mean(dice):.3f} ± {np.std(dice, ddof=1):.3f}" in text
    assert "| 5.0 ± 5.0 |" in text  # OOD shares 0, 5 and 10 %
    assert text.index("seed 2026") < text.index("seed 2027") < text.index("seed 2028")
    # A seed without a figure makes that figure n/a, not a mean of the others.
    reports[0]["targets"]["busi"]["classification"]["ece"] = None
    assert "| n/a |" in "\n".join(render_seeds(reports))
    assert render_seeds([]) == []
    # The network's table, the whole-image probe's and the shipped bundle's (network + probe
    # with lesion means) say which recipe they are.
    network, whole = render_seeds(reports, "seeds")[0], render_seeds(reports, "seeds-probe")[0]
    shipped = render_seeds(reports, "seeds-lesion")[0]
    assert "docs/results/seeds/" in network and "network" in network
    assert "docs/results/seeds-probe/" in whole and "whole-image probe" in whole
    assert "docs/results/seeds-lesion/" in shipped and "shipped bundle" in shipped
    assert "--no-lesion-means" in "\n".join(render_seeds(reports, "seeds-probe"))
    assert "lesion means" in "\n".join(render_seeds(reports, "seeds-lesion"))


def test_the_report_names_the_phantoms_a_bundle_lets_past_the_ood_flag() -> None:
    # The shipped bundle flags all 24 (tests/e2e/test_ood_shipped.py); a head that flags
    # nothing (a threshold no score reaches) lets every one through, and each is named.
    from appliance.analysis import Analyzer
    from appliance.bundle import load_bundle
    from appliance.config import RuntimeConfig, ThresholdsConfig
    from appliance.runtime import create_backend

    bundle = load_bundle(Path(__file__).resolve().parents[2] / "models" / "default")
    backend = create_backend(bundle, RuntimeConfig(backend="onnxruntime-cpu"))
    analyzer = Analyzer(bundle, backend, ThresholdsConfig())
    shipped = phantom_figures(analyzer)
    assert shipped is not None and shipped["least_margin"] > 1.0
    assert shipped == {
        "n": 24,
        "flagged": 24,
        "missed": [],
        "least_margin": shipped["least_margin"],
    }
    analyzer.ood_threshold = 1e12
    blind = phantom_figures(analyzer)
    assert blind is not None and blind["flagged"] == 0 and len(blind["missed"]) == 24
    assert blind["least_margin"] == 0.0  # rounded: every score is far below 1e12
    assert blind["missed"][0] == {"seed": 0, "echogenicity": 0.0, "posterior": "none"}
    analyzer.ood_threshold = None  # a bundle without the score: nothing to measure
    assert phantom_figures(analyzer) is None
    # RESULTS.md says which a report's bundle let through, and that it is not shippable.
    from trainer.results_doc import render_run

    report = {
        **{"model": "m@1", "measured": "2026-12-04", "machine": "x86_64", "split": "test"},
        "bootstrap_resamples": 20,
        **{"targets": {}, "phantoms": {**blind, "missed": blind["missed"][:1]}},
    }
    text = "\n".join(render_run("m", report))
    assert "phantoms flagged: 0 of 24 (the lowest OOD score 0.00 times the threshold) (not" in text
    shipped_text = "\n".join(render_run("m", {**report, "phantoms": shipped}))
    low = f"{shipped['least_margin']:.2f}"
    assert f"phantoms flagged: 24 of 24 (the lowest OOD score {low} times the threshold)." in (
        shipped_text
    )
    assert "seed 0 echogenicity 0.0 none" in text


def test_the_ood_layer_candidates_are_tabled_per_network() -> None:
    from trainer.results_doc import render_ood_layers

    def head(flagged: int, least: float) -> dict[str, Any]:
        return {
            "test_flagged": 0.05,
            "selection_phantoms": {"n": 60, "flagged": 60, "least_margin": 1.2},
            "check_phantoms": {"n": 24, "flagged": flagged, "least_margin": least},
            "ultrasound_frames": {"n": 34, "flagged": 34, "least_margin": 2.0},
            "auroc_test_vs_frames": 0.995,
        }

    record = {
        "model": "m@1",
        "measured": "2026-12-04T22:30:00+00:00",
        "machine": "x86_64 CPU",
        "flagged_share_of_val": 0.05,
        "heads": {"all six": head(21, 0.94), "encoders": head(24, 1.04)},
        "single_layers": {"encoder1": head(24, 1.05), "classifier": head(0, 0.17)},
    }
    text = "\n".join(render_ood_layers([record]))
    assert "| all six | m@1 | 5.0 % | 60/60 (1.20) | 21/24 (0.94) | 34/34 | 0.995 |" in text
    assert "| encoders | m@1 | 5.0 % | 60/60 (1.20) | 24/24 (1.04) | 34/34 | 0.995 |" in text
    assert "| m@1 | 1.20 / 1.05 | 1.20 / 0.17 |" in text
    assert render_ood_layers([]) == []
