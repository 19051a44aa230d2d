"""The federation experiments (`trainer.federated.experiments`) on small real parts.

Not marked ``federation``: these run in the default suite (about 20 s). The EA metric on
constructed numbers, the DP noise search against the project's accountant, SecAgg+'s
arithmetic against the exact weighted mean, and a 2-site, 2-round run of the experiment set
on synthetic arrays (real Opacus, real strategy) whose JSON the renderer turns into markdown,
then resumed.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from appliance.federation.privacy import PrivacyAccountant
from trainer.data import ArraySet
from trainer.federated import FederatedError
from trainer.federated.experiment_doc import render_dir, targets
from trainer.federated.experiment_metrics import equal_accuracy, noise_for_epsilon
from trainer.federated.experiment_secagg import secagg_mean
from trainer.federated.experiment_sites import Site
from trainer.federated.experiments import ExperimentSettings, run_all


def test_equal_accuracy_is_the_largest_distance_from_the_mean() -> None:
    assert equal_accuracy({"a": 0.9, "b": 0.8, "c": 0.7}) == pytest.approx(0.1)
    # mean 0.7: distances 0.2, 0.1, 0.1 -> the largest, not the sum or the range
    assert equal_accuracy([0.9, 0.6, 0.6]) == pytest.approx(0.2)
    assert equal_accuracy([0.75, 0.75]) == 0.0
    assert equal_accuracy([0.8, None, 0.7]) is None
    with pytest.raises(FederatedError, match="at least two"):
        equal_accuracy([0.8])


@pytest.mark.parametrize("target", [8.0, 1.0])
def test_noise_search_reproduces_its_epsilon_in_the_accountant(target: float) -> None:
    choice = noise_for_epsilon(target, 1e-5, sample_rate=1 / 16, steps_per_round=16, rounds=10)
    # composed round by round, as a node's ledger does
    history = [(choice.noise_multiplier, 1 / 16, 16)] * 10
    epsilon = PrivacyAccountant.from_history(history).epsilon(1e-5)
    assert target - 0.02 <= epsilon <= target
    assert choice.epsilon == pytest.approx(epsilon)
    # a little less noise spends more than the target
    less = [(choice.noise_multiplier * 0.97, 1 / 16, 16)] * 10
    assert PrivacyAccountant.from_history(less).epsilon(1e-5) > target


def test_noise_search_refuses_a_bad_target() -> None:
    with pytest.raises(FederatedError, match="target epsilon"):
        noise_for_epsilon(0.0, 1e-5, 0.1, 10, 2)


def test_secagg_mean_is_the_weighted_mean_within_quantisation() -> None:
    rng = np.random.default_rng(0)
    deltas = [
        [rng.normal(0, 0.1, (5, 7)).astype(np.float32), rng.normal(0, 1, (3,))] for _ in range(3)
    ]
    weights = [3, 5, 8]
    got = secagg_mean(deltas, weights, clipping_range=8.0, max_weight=10.0)
    exact = [sum(w * d[i] for w, d in zip(weights, deltas, strict=True)) / 16 for i in range(2)]
    for a, b in zip(got.mean, exact, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert got.relative_error < 1e-4
    # the deployment's max-weight with small counts: the same deltas lose precision
    coarse = secagg_mean(deltas, weights, clipping_range=8.0, max_weight=10_000.0)
    assert coarse.relative_error > 10 * got.relative_error
    with pytest.raises(FederatedError, match="at least two"):
        secagg_mean(deltas[:1], weights[:1], 8.0, 10.0)


def _synthetic(name: str, seed: int, n: int) -> Site:
    """Images with a bright square lesion; label by lesion size (learnable, both classes)."""
    rng = np.random.default_rng(seed)

    def split(count: int) -> ArraySet:
        images = rng.normal(0, 0.3, (count, 16, 16)).astype(np.float32)
        masks = np.zeros((count, 16, 16), np.uint8)
        labels = np.zeros(count, np.int64)
        for i in range(count):
            size = 3 if i % 2 else 6
            y, x = rng.integers(1, 16 - size, 2)
            masks[i, y : y + size, x : x + size] = 1
            images[i][masks[i] == 1] += 2.0
            labels[i] = 1 if size == 3 else 2  # benign / malignant
        return ArraySet(images, masks, labels, tuple(f"{name}/{i}.png" for i in range(count)))

    return Site(name, split(n), split(8), split(8), n)


TINY = ExperimentSettings(
    size=16,
    base_width=2,
    classifier_widths=(4, 4),
    rounds=2,
    batch_size=4,
    dp_epsilons=(8.0,),
    client_dp_epsilon=0.0,
)


def test_tiny_run_writes_json_the_renderer_turns_into_markdown_and_resumes(
    tmp_path: Path,
) -> None:
    a = _synthetic("a", 1, 12)
    scanners = {"x": np.arange(0, 4, dtype=np.int64), "y": np.arange(4, 8, dtype=np.int64)}
    sites = [replace(a, test_scanners=scanners), _synthetic("b", 2, 8)]
    out = tmp_path / "federation"
    only = ["fedavg", "fedavg-dp-eps8", "fedavg-secagg", "local-b", "centralised"]
    paths = run_all(TINY, sites, out, only, log=lambda _: None)
    assert sorted(p.name for p in paths) == sorted(f"{n}.json" for n in only)

    fed = json.loads((out / "fedavg.json").read_text())
    assert fed["settings"]["rounds"] == 2 and len(fed["rounds"]) == 2
    assert set(fed["sites"]) == {"a", "b"}
    assert 0 <= fed["sites"]["a"]["dice"] <= 1 and fed["ea"]["auc"] is not None
    assert fed["ea"]["auc"] == pytest.approx(
        abs(fed["sites"]["a"]["auc"] - fed["sites"]["b"]["auc"]) / 2
    )
    assert fed["sites"]["a"]["by_scanner"]["y"]["n_test"] == 4
    assert "by_scanner" not in fed["sites"]["b"]
    dp = json.loads((out / "fedavg-dp-eps8.json").read_text())
    for site in ("a", "b"):
        assert 7.9 <= dp["privacy"]["epsilon_spent"][site] <= 8.0
    local = json.loads((out / "local-b.json").read_text())
    assert set(local["sites"]) == {"b"} and local["n_train"] == 8
    secagg = json.loads((out / "fedavg-secagg.json").read_text())
    assert all(r["secagg_relative_error"] >= 0 for r in secagg["rounds"])

    (out / "latency.json").write_text(
        json.dumps(
            {
                "kind": "inference_latency_during_round",
                "idle": {"p50_ms": 10.0, "p95_ms": 12.0},
                "during_round": {"p50_ms": 11.0, "p95_ms": 15.0},
                "ratio_p95": 1.25,
                "machine": "test",
                "command": "pytest",
            }
        )
    )
    reference = tmp_path / "shipped.json"
    reference.write_text(
        json.dumps(
            {
                "model": "shipped@1",
                "measured": "2026-12-01T00:00:00",
                "targets": {
                    "busi": {"n": 3, "segmentation": {"dice": 0.5}, "classification": {"auc": 0.75}}
                },
            }
        )
    )
    markdown = render_dir(out, reference)
    assert "`shipped@1`" in markdown and "BUSI (3) Dice 0.500, AUC 0.750" in markdown
    for needle in (
        "## Test figures per site",
        "| fedavg-dp-eps8 |",
        "## Privacy spent",
        "## Figures to reach",
        "## Inference latency during a round",
        "1.25",
    ):
        assert needle in markdown
    measured = {what: ok for what, _, ok in targets([json.loads(p.read_text()) for p in paths])}
    assert any(k.startswith("DP <= 1.5x") for k in measured)

    # Resume: a finished configuration at the same settings is skipped, its file untouched.
    before = {p.name: p.stat().st_mtime_ns for p in paths}
    said: list[str] = []
    run_all(TINY, sites, out, ["fedavg", "local-b"], log=said.append)
    assert all("skipped" in line for line in said) and len(said) == 2
    assert {p.name: p.stat().st_mtime_ns for p in paths} == before
    # Other settings: the configuration runs again.
    said.clear()
    run_all(replace(TINY, rounds=1), sites, out, ["local-b"], log=said.append)
    assert any("running" in line for line in said)
    assert len(json.loads((out / "local-b.json").read_text())["rounds"]) == 1
