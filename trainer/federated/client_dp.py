"""Client-level DP (DP-FedAvg with fixed clipping) over Flower's DP primitives.

A run with ``client-dp-noise-multiplier`` z > 0 (run config, `RunSettings`) protects each
node's *whole contribution* to a round, not one image:

- **on the node** (`clip_update`): its weight delta is scaled to L2 norm at most C
  (``min(client-dp-clipping-norm, federation.privacy.max_grad_norm)``: the node never
  clips more loosely than its own config says), with Flower's ``clip_inputs_inplace``
  (the FlatClip of McMahan et al. 2018, the same function Flower's
  ``fixedclipping_mod`` calls), and it is weighted like every other node (``num_examples``
  1), so one node moves the sum of the updates by at most C;
- **on the coordinator** (`noise_mean`): Gaussian noise of standard deviation z * C / m
  (Flower's ``compute_stdv``; m = the nodes that trained) is added to the mean of the m
  clipped updates (Flower's ``add_gaussian_noise_inplace``) before it becomes the new
  global model, which is signed and sent with the noise in it.

Flower's own wrapper and mod are not used as they are: ``fixedclipping_mod`` clips
(reply − instruction), but these nodes reply with deltas already; and
``DifferentialPrivacyClientSideFixedClipping`` adds its noise to the parameters that
``aggregate_fit`` returns, while `SignedDeltaFedAvg` signs and sends its own copy, so the
noise would never reach a node. The primitives are the same.

Accounting (`round_record`): each round is one Gaussian mechanism of noise multiplier z
on the node's clipped contribution, recorded as ``(z, 1.0, 1)`` in the node's ledger and
composed by Opacus's RDP accountant like DP-SGD's steps. No amplification by sampling is
claimed (sample rate 1): Flower picks nodes without replacement, not by Poisson sampling.

Who is protected against whom (README, Federation): a hospital's whole set of cases in a
round, against whoever sees the global models (the other hospitals, anyone a model is
given to). Not against the coordinator, which adds the noise after it has seen the mean
(under SecAgg+ only the sum, but still noise-free), and only if the coordinator really
adds it: a node can account for it, it cannot check it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flwr.supercore.differential_privacy import (
    add_gaussian_noise_inplace,
    clip_inputs_inplace,
    compute_stdv,
    get_norm,
)
from numpy.typing import NDArray

from trainer.federated import FederatedError
from trainer.federated.wire import Arrays

SAMPLE_RATE = 1.0  # no amplification by sampling claimed (see the module docstring)
STEPS = 1  # one Gaussian mechanism per round


def clip_update(
    update: Sequence[NDArray[np.generic]], clipping_norm: float
) -> tuple[Arrays, float]:
    """A copy of `update` scaled to L2 norm <= `clipping_norm`; and its norm before."""
    if not clipping_norm > 0:
        raise FederatedError(f"client-level DP clipping norm {clipping_norm!r}: expected > 0")
    arrays = [np.array(a, dtype=np.float32, copy=True) for a in update]
    norm = get_norm(arrays)
    if not np.isfinite(norm):
        raise FederatedError("the update is not finite: nothing to clip, the round is refused")
    if norm > 0:  # Flower's clip divides by the norm
        clip_inputs_inplace(arrays, clipping_norm)
    return arrays, norm


def noise_stddev(noise_multiplier: float, clipping_norm: float, n_trained: int) -> float:
    """Standard deviation of the noise on the mean of `n_trained` clipped updates."""
    if n_trained < 1:
        raise FederatedError("no node trained: there is no mean to add noise to")
    if not (noise_multiplier > 0 and clipping_norm > 0):
        raise FederatedError(
            f"client-level DP needs noise multiplier and clipping norm > 0, got "
            f"{noise_multiplier} and {clipping_norm}"
        )
    return compute_stdv(noise_multiplier, clipping_norm, n_trained)


def noise_mean(
    mean: Sequence[NDArray[np.generic]],
    noise_multiplier: float,
    clipping_norm: float,
    n_trained: int,
) -> Arrays:
    """A copy of `mean` with Gaussian noise of `noise_stddev` added to every value."""
    std = noise_stddev(noise_multiplier, clipping_norm, n_trained)
    arrays = [np.array(a, dtype=np.float32, copy=True) for a in mean]
    add_gaussian_noise_inplace(arrays, std)
    return arrays


def round_record(noise_multiplier: float) -> tuple[float, float, int]:
    """What one client-level round spends: (noise multiplier, sample rate, steps)."""
    return (float(noise_multiplier), SAMPLE_RATE, STEPS)


def refusal(run_noise: float, node_noise: float) -> str | None:
    """Why a node in client mode does not train in a run; None when it may."""
    if run_noise <= 0:
        return (
            "federation.privacy.mode = 'client', but this run adds no noise to the aggregate "
            "(client-dp-noise-multiplier = 0): the node does not train without it; the "
            "coordinator must set client-dp-noise-multiplier, or set mode = 'example'"
        )
    if run_noise < node_noise:
        return (
            f"this run's client-dp-noise-multiplier {run_noise:g} is below the "
            f"{node_noise:g} this node requires (federation.privacy.noise_multiplier)"
        )
    return None
