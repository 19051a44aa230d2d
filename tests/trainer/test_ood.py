"""The out-of-distribution score: fitted on training features, exported in the graph, and
turned into the ``out_of_distribution`` flag by the node's Analyzer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from appliance.analysis import Analyzer
from appliance.bundle import load_bundle
from appliance.config import RuntimeConfig, ThresholdsConfig
from appliance.runtime import create_backend
from tests.trainer.tinybundle import make_tiny_bundle
from trainer.models import FoldEnsemble, MAUNet
from trainer.ood import (
    LAYER_NAMES,
    OOD_LAYERS,
    LayeredMahalanobisHead,
    LayeredOODStats,
    MahalanobisHead,
    OODStats,
    threshold_at,
)


def test_the_score_is_the_distance_to_the_nearest_class_and_the_head_computes_it() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, (400, 4))
    b = rng.normal(6.0, 1.0, (400, 4))
    stats = OODStats.fit(np.concatenate([a, b]), np.array([0] * 400 + [1] * 400))
    near_a, near_b, far = np.zeros((1, 4)), np.full((1, 4), 6.0), np.full((1, 4), 30.0)
    scores = stats.score(np.concatenate([near_a, near_b, far]))
    assert scores[0] < 0.1 and scores[1] < 0.1 and scores[2] > 100
    head = MahalanobisHead(stats)
    x = rng.normal(3.0, 5.0, (16, 4))
    torch_scores = head(torch.tensor(x, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(torch_scores, stats.score(x), rtol=1e-4)
    assert threshold_at(np.arange(100.0), 0.05) == pytest.approx(94.05)
    with pytest.raises(ValueError, match="flagged_share"):
        threshold_at(np.arange(10.0), 1.0)
    with pytest.raises(ValueError, match="features"):
        OODStats.fit(np.zeros((2, 64)), np.array([0, 1]))
    with pytest.raises(ValueError, match="do not vary"):
        OODStats.fit(np.zeros((8, 64)), np.array([0, 1] * 4))


def test_ledoit_wolf_shrinkage_matches_its_definition_and_fits_wide_features() -> None:
    from trainer.ood import ledoit_wolf_shrinkage

    rng = np.random.default_rng(1)
    # The intensity from its definition (Ledoit & Wolf 2004, lemmas 3.2-3.4), term by term.
    x = rng.normal(size=(40, 6)) * np.array([1.0, 2.0, 0.5, 1.0, 3.0, 1.0])
    n, p = x.shape
    s = x.T @ x / n
    m = np.trace(s) / p
    d2 = np.sum((s - m * np.eye(p)) ** 2) / p
    b2 = sum(np.sum((np.outer(r, r) - s) ** 2) for r in x) / n**2 / p
    assert ledoit_wolf_shrinkage(x) == pytest.approx(min(b2, d2) / d2, rel=1e-9)
    # Isotropic data: the sample covariance is noise around m * I, shrunk nearly all the way.
    assert ledoit_wolf_shrinkage(rng.normal(size=(30, 200))) > 0.8
    # Many more cases than features, of very different variances: little shrinkage.
    assert ledoit_wolf_shrinkage(x @ np.diag([1.0, 5.0, 1.0, 9.0, 1.0, 1.0])) < 0.3
    # Fewer cases than features (the paper classifier; a node's own few reviewed cases):
    # fitted, and it still separates the classes.
    wide_a = rng.normal(0.0, 1.0, (30, 400))
    wide_b = rng.normal(1.0, 1.0, (30, 400))
    stats = OODStats.fit(np.concatenate([wide_a, wide_b]), np.array([0] * 30 + [1] * 30))
    inside = stats.score(rng.normal(0.0, 1.0, (20, 400)))
    outside = stats.score(rng.normal(0.0, 4.0, (20, 400)))
    assert np.all(np.isfinite(inside)) and inside.max() < outside.min()


def test_the_layered_score_averages_each_layers_distance_over_its_val_median() -> None:
    rng = np.random.default_rng(4)
    labels = np.array([0, 1] * 100)
    widths = (3, 5, 4, 2, 6, 3)  # one per layer of LAYER_NAMES

    def features(n: int, sd: float) -> list[np.ndarray]:
        return [rng.normal(0.0, sd * (1 + i % 2), (n, w)) for i, w in enumerate(widths)]

    train, val = features(200, 1.0), features(60, 1.0)
    for names in (LAYER_NAMES, OOD_LAYERS, ("encoder2", "classifier")):
        stats = LayeredOODStats.fit(train, labels, val, names)
        assert stats.names == names and len(stats.layers) == len(names)
        picked = [val[LAYER_NAMES.index(n)] for n in names]
        for layer, scale, v in zip(stats.layers, stats.scales, picked, strict=True):
            assert np.median(layer.score(v) / scale) == pytest.approx(1.0)
        x = features(16, 3.0)
        by_hand = np.mean(
            [
                st.score(x[LAYER_NAMES.index(n)]) / s
                for st, s, n in zip(stats.layers, stats.scales, names, strict=True)
            ],
            axis=0,
        )
        np.testing.assert_allclose(stats.score(x), by_hand)
        head = LayeredMahalanobisHead(stats)
        torch_scores = head([torch.tensor(f, dtype=torch.float32) for f in x]).numpy()
        np.testing.assert_allclose(torch_scores, stats.score(x), rtol=1e-4)
        # Far off in one scored layer only: the ordinary other layers do not hide it ...
        far = [np.zeros((1, w)) for w in widths]
        far[LAYER_NAMES.index(names[-1])] = np.full((1, widths[LAYER_NAMES.index(names[-1])]), 40.0)
        assert stats.score(far)[0] > 10 * np.quantile(stats.score(val), 0.95)
    # ... and a layer the head does not score does not move it.
    stats = LayeredOODStats.fit(train, labels, val, OOD_LAYERS)
    moved = [f.copy() for f in val]
    moved[LAYER_NAMES.index("classifier")] += 40.0
    np.testing.assert_array_equal(stats.score(moved), stats.score(val))
    assert LayeredOODStats.fit(train, labels, val).names == OOD_LAYERS  # the default
    with pytest.raises(ValueError, match="layers"):
        LayeredOODStats.fit(train, labels, val[:1])
    for bad in ((), ("classifier", "encoder1"), ("encoder1", "encoder1"), ("decoder",)):
        with pytest.raises(ValueError, match="layers"):
            LayeredOODStats.fit(train, labels, val, bad)


def test_the_mau_nets_statistics_are_each_levels_channel_mean_and_std() -> None:
    torch.manual_seed(0)
    net = MAUNet(base_width=4).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        logits, stats = net.forward_with_stats(x)
        torch.testing.assert_close(logits, net(x))
        # Four encoder levels and the bottleneck, 2 x channels each (widths 4 ... 64).
        assert [tuple(s.shape) for s in stats] == [(2, 8), (2, 16), (2, 32), (2, 64), (2, 128)]
        first = net.encoders[0](x)
        by_hand = torch.cat([first.mean(dim=(2, 3)), first.std(dim=(2, 3), correction=0)], 1)
        torch.testing.assert_close(stats[0], by_hand, atol=1e-5, rtol=1e-4)
        torch.manual_seed(1)
        folds = FoldEnsemble([net, MAUNet(base_width=4).eval()])
        mean, disagreement, fold_stats = folds.predict_with_stats(x)
        torch.testing.assert_close((mean, disagreement), folds.predict(x))
        for a, b in zip(fold_stats, stats, strict=True):  # the first fold model's
            torch.testing.assert_close(a, b)


@pytest.fixture(scope="module")
def ood_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("ood"))


def test_the_node_flags_images_above_the_bundles_threshold(ood_bundle: Path) -> None:
    bundle = load_bundle(ood_bundle)
    assert [o.name for o in bundle.manifest.outputs][-1] == "ood_score"
    threshold = bundle.manifest.postprocessing["ood_threshold"]
    backend = create_backend(bundle, RuntimeConfig(backend="onnxruntime-cpu"))
    analyzer = Analyzer(bundle, backend, ThresholdsConfig())
    assert analyzer.ood_threshold == threshold
    rng = np.random.default_rng(3)
    smooth = rng.integers(60, 120, (48, 64)).astype(np.uint8)
    checker = (np.indices((48, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    results = analyzer.analyse([smooth, checker], None)
    for r in results:
        assert r.ood_score is not None and np.isfinite(r.ood_score)
        flagged = "out_of_distribution" in r.diagnosis.flags
        assert flagged == (r.ood_score > threshold)
    # The same images with the threshold moved below / above their scores.
    scores = [r.ood_score for r in results]
    analyzer.ood_threshold = min(s for s in scores if s is not None) / 2
    assert all(
        "out_of_distribution" in r.diagnosis.flags
        for r in analyzer.analyse([smooth, checker], None)
    )
    analyzer.ood_threshold = max(s for s in scores if s is not None) * 2
    assert not any(
        "out_of_distribution" in r.diagnosis.flags
        for r in analyzer.analyse([smooth, checker], None)
    )


def test_the_report_measures_the_flag_on_pydicom_datas_ultrasound(ood_bundle: Path) -> None:
    from trainer.site_report import ood_figures

    bundle = load_bundle(ood_bundle)
    backend = create_backend(bundle, RuntimeConfig(backend="onnxruntime-cpu"))
    analyzer = Analyzer(bundle, backend, ThresholdsConfig())
    threshold = analyzer.ood_threshold
    assert threshold is not None
    inside = [threshold / 4, threshold / 2, threshold * 0.9]
    fig = ood_figures(analyzer, inside, boots=20)
    assert fig is not None and fig["n_out_files"] >= 5 and fig["n_out_frames"] >= fig["n_out_files"]
    assert fig["in_distribution_flagged"] == 0.0
    assert 0.0 <= fig["auroc_frames"] <= 1.0
    # A model without the score: nothing to measure.
    assert ood_figures(analyzer, [None], boots=20) is None


def test_temperature_scaling_calibrates_an_overconfident_model() -> None:
    from trainer.calibration import expected_calibration_error, fit_temperature, reliability_bins

    rng = np.random.default_rng(0)
    n = 3000
    labels = rng.integers(0, 3, n)
    true_logits = rng.normal(0, 1.0, (n, 3))
    true_logits[np.arange(n), labels] += 1.0
    # Sample labels from the true probabilities, then make the model 3x over-confident.
    p = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(3, p=row) for row in p])
    logits = 3.0 * true_logits

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    t = fit_temperature(logits, labels)
    assert 2.5 < t < 3.5
    before = expected_calibration_error(softmax(logits), labels)
    after = expected_calibration_error(softmax(logits / t), labels)
    assert after < before / 3 and after < 0.03
    rows = reliability_bins(softmax(logits / t), labels, bins=10)
    assert sum(r["n"] for r in rows) == n and len(rows) == 10
    with pytest.raises(ValueError, match="logits"):
        fit_temperature(np.zeros(3), labels[:3])
