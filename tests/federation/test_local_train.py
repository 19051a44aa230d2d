"""Local training: what Opacus spends is what was planned (and checked against the
budget) before training; FedProx's step pulls towards the global model."""

from __future__ import annotations

import time

import numpy as np
import pytest

from trainer.data import ArraySet
from trainer.federated.local_train import DpSgd, LocalSettings, plan_round, train_local
from trainer.federated.wire import load_arrays, state_arrays, subtract
from trainer.weights import architecture, build_net


def _data(n: int) -> ArraySet:
    rng = np.random.default_rng(3)
    return ArraySet(
        rng.normal(size=(n, 32, 32)).astype(np.float32),
        (rng.random((n, 32, 32)) > 0.8).astype(np.uint8),
        rng.integers(0, 3, n).astype(np.int64),
        tuple(f"case-{i}" for i in range(n)),
    )


def _distance(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(np.sqrt(sum(float((d**2).sum()) for d in subtract(a, b))))


def test_dp_sgd_spends_exactly_the_planned_round_and_changes_the_model() -> None:
    settings = LocalSettings(epochs=2, batch_size=4, learning_rate=0.05)
    data = _data(13)
    plan = plan_round(len(data), settings)
    assert (plan.sample_rate, plan.steps) == (0.25, 8)
    times = {}
    for dp in (None, DpSgd(noise_multiplier=1.1, max_grad_norm=1.0)):
        net = build_net(architecture(4, (4, 8), 0.1))
        before = state_arrays(net)
        started = time.perf_counter()
        result = train_local(net, data, settings, dp)
        times[dp is not None] = time.perf_counter() - started
        assert _distance(state_arrays(net), before) > 0
        if dp is None:
            assert result.dp is None
        else:
            assert result.dp == (1.1, plan.sample_rate, plan.steps)
    print(f"local round, 13 images: plain {times[False]:.2f} s, DP-SGD {times[True]:.2f} s")


def test_fedprox_stays_closer_to_the_global_model() -> None:
    data = _data(8)
    start = state_arrays(build_net(architecture(4, (4, 8), 0.1)))
    moved = {}
    for mu in (0.0, 5.0):
        net = build_net(architecture(4, (4, 8), 0.1))
        load_arrays(net, start)
        settings = LocalSettings(epochs=3, batch_size=4, learning_rate=0.05, proximal_mu=mu)
        train_local(net, data, settings, None, global_state=start)
        moved[mu] = _distance(state_arrays(net), start)
    assert moved[5.0] < moved[0.0]


def test_dp_sgd_survives_empty_poisson_batches_and_accounts_them() -> None:
    # 2 cases in batches of 1: sample rate 1/2, so about a quarter of the steps draw no case
    # at all. Such a step is the noise alone (Opacus refused it with "Per sample gradient is
    # not initialized" before), and it counts in the accountant like every other step.
    data = _data(2)
    for seed in range(6):
        settings = LocalSettings(epochs=2, batch_size=1, learning_rate=0.05, seed=seed)
        net = build_net(architecture(4, (4, 8), 0.1))
        before = state_arrays(net)
        result = train_local(net, data, settings, DpSgd(noise_multiplier=1.0, max_grad_norm=1.0))
        plan = plan_round(len(data), settings)
        assert result.dp == (1.0, plan.sample_rate, plan.steps)
        assert _distance(state_arrays(net), before) > 0


def test_dp_sgd_trains_every_model_family_and_leaves_unused_parameters_alone() -> None:
    # The dual-stage classifier carries its stage-one heads, which the graph does not use:
    # Opacus refused the step over them ("Per sample gradient is not initialized"). They
    # are frozen for the round (zero delta) and trainable again afterwards.
    import torch

    from tests.exporters.families import TINY_DUAL_STAGE
    from trainer.models import FameNodeNet, MAUNet
    from trainer.models.dual_stage import DualStageClassifier
    from trainer.models.fold_ensemble import FoldEnsemble

    data = _data(8)
    settings = LocalSettings(epochs=1, batch_size=4, learning_rate=0.05)
    torch.manual_seed(0)
    for segmenter in (MAUNet(base_width=4), FoldEnsemble([MAUNet(base_width=4) for _ in range(3)])):
        classifier = DualStageClassifier(TINY_DUAL_STAGE)
        net = FameNodeNet(segmenter, classifier)
        heads = [p.detach().clone() for p in classifier.heads.parameters()]
        before = state_arrays(net)
        result = train_local(net, data, settings, DpSgd(noise_multiplier=1.0, max_grad_norm=1.0))
        assert result.dp is not None
        assert _distance(state_arrays(net), before) > 0
        after = list(classifier.heads.parameters())
        assert all(torch.equal(a, b) for a, b in zip(after, heads, strict=True))
        assert all(p.requires_grad for p in net.parameters())


@pytest.mark.parametrize("lesion_means", [False, True], ids=["whole-image", "lesion-means"])
def test_dp_sgd_fine_tunes_a_probe_net_through_its_probe(lesion_means: bool) -> None:
    # A layer-probe bundle (trainer.probe) classifies with its probe: the class loss reaches
    # the probe and, through the layer statistics (and the lesion means, where the probe
    # reads them), the MAU-Net; the classifier's own last layer is unused, so it is frozen
    # for the round and left as it was.
    import torch

    from trainer.models import LayerProbe
    from trainer.ood import probe_features

    data = _data(8)
    settings = LocalSettings(epochs=1, batch_size=4, learning_rate=0.05)
    torch.manual_seed(0)
    net = build_net(architecture(4, (4, 8), 0.1))
    widths = [f.shape[1] for f in probe_features(net, data.images[:1], lesion_means=lesion_means)]
    net.probe = LayerProbe(tuple(widths), lesion_means=lesion_means)
    fc = [p.detach().clone() for p in net.classifier.fc.parameters()]
    probe = [p.detach().clone() for p in net.probe.parameters()]
    result = train_local(net, data, settings, DpSgd(noise_multiplier=1.0, max_grad_norm=1.0))
    assert result.dp is not None
    assert all(torch.equal(a, b) for a, b in zip(net.classifier.fc.parameters(), fc, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(net.probe.parameters(), probe, strict=True))
    assert all(p.requires_grad for p in net.parameters())
