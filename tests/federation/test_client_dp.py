"""Client-level DP's two halves (`trainer.federated.client_dp`), on real arrays.

The node's clipping scales an update to L2 norm at most C and leaves a smaller one as it
is; the coordinator's noise has standard deviation z * C / m (measured on a million
values); what a round spends is what Opacus's RDP accountant gives for (z, 1, 1) per
round; a node in client mode refuses a run without noise or with less than it requires.
"""

from __future__ import annotations

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from appliance.federation.privacy import PrivacyAccountant
from trainer.federated import FederatedError
from trainer.federated.client_dp import (
    clip_update,
    noise_mean,
    noise_stddev,
    refusal,
    round_record,
)


def _norm(arrays: list[np.ndarray]) -> float:
    return float(np.sqrt(sum(float(np.sum(a.astype(np.float64) ** 2)) for a in arrays)))


def test_an_update_over_the_norm_is_scaled_to_it_and_a_smaller_one_kept() -> None:
    rng = np.random.default_rng(0)
    update = [
        rng.normal(0, 1, (4, 3, 3)).astype(np.float32),
        rng.normal(0, 1, 7).astype(np.float32),
    ]
    before = [a.copy() for a in update]
    clipped, norm = clip_update(update, 0.5)
    assert norm == pytest.approx(_norm(before), rel=1e-6) and norm > 0.5
    assert _norm(clipped) == pytest.approx(0.5, rel=1e-5)
    ratio = clipped[0] / before[0]
    assert np.allclose(ratio, ratio.flat[0]) and np.allclose(clipped[1] / before[1], ratio.flat[0])
    assert all(np.array_equal(a, b) for a, b in zip(update, before, strict=True))  # not mutated
    kept, _ = clip_update(update, 10 * norm)
    assert all(np.array_equal(a, b) for a, b in zip(kept, before, strict=True))
    zero, zero_norm = clip_update([np.zeros(5, np.float32)], 1.0)
    assert zero_norm == 0 and not zero[0].any()


def test_a_non_finite_update_or_bad_norm_is_refused() -> None:
    with pytest.raises(FederatedError, match="not finite"):
        clip_update([np.array([1.0, np.nan], np.float32)], 1.0)
    with pytest.raises(FederatedError, match="expected > 0"):
        clip_update([np.ones(3, np.float32)], 0.0)


def test_noise_on_the_mean_has_stddev_z_c_over_m() -> None:
    assert noise_stddev(5.0, 2.0, 4) == pytest.approx(2.5)
    mean = [np.full((1000, 500), 0.25, np.float32), np.zeros(500_000, np.float32)]
    noisy = noise_mean(mean, 5.0, 2.0, 4)
    noise = np.concatenate([(n - m).ravel() for n, m in zip(noisy, mean, strict=True)])
    assert noise.std() == pytest.approx(2.5, rel=0.01)
    assert abs(noise.mean()) < 0.01
    assert float(mean[0][0, 0]) == 0.25 and not mean[1].any()  # not mutated
    with pytest.raises(FederatedError, match="no node trained"):
        noise_stddev(5.0, 2.0, 0)


def test_rounds_are_accounted_as_one_gaussian_mechanism_each() -> None:
    record = round_record(4.0)
    assert record == (4.0, 1.0, 1)
    expected = RDPAccountant()
    expected.history = [record] * 30
    accountant = PrivacyAccountant.from_history([record] * 30)
    assert accountant.epsilon(1e-5) == pytest.approx(expected.get_epsilon(delta=1e-5), rel=1e-9)


def test_a_client_mode_node_refuses_runs_without_enough_noise() -> None:
    assert "adds no noise" in (refusal(0.0, 1.0) or "")
    assert "below the 2 this node requires" in (refusal(1.5, 2.0) or "")
    assert refusal(2.0, 2.0) is None
