"""SecAgg+'s arithmetic on one round's updates, in process, with Flower's own functions.

What Flower 1.42's SecAgg+ does to the numbers (`flwr.client.mod.secaggplus_mod`, stage 2,
and `SecAggPlusWorkflow`'s unmask stage), reproduced call for call:

- each node scales its delta by its weight ``n / max_weight`` quantised to
  ``q = round(n / max_weight * quantization_range)``, quantises it with Flower's stochastic
  `quantize` within ``+-clipping_range`` onto ``[0, quantization_range)``, prepends ``q``
  (`factor_combine`), adds its private mask and its pairwise masks (Flower's
  `pseudo_rand_gen`, seeded by its own random seed and by the ECDH keys it shares with each
  other node, `generate_shared_key` over Flower's `generate_key_pairs`), and reduces mod
  ``modulus_range``: this masked vector is all the coordinator receives from it;
- the coordinator sums the masked vectors mod ``modulus_range``, removes the private masks
  (their seeds are rebuilt from Shamir shares in the protocol; here every node stays, so the
  seeds are taken as they are and the pairwise masks cancel), extracts the summed weight,
  `dequantize`\\ s, shifts by ``-(k - 1) * clipping_range`` and divides by the summed weight:
  the weighted mean of the deltas, with SecAgg+'s quantisation error in it.

Left out: the key-share messages and Shamir secret sharing (no node drops out here), so the
time this takes is the compute of masking and quantisation only, not the protocol's message
rounds; the deployment test measures those (README, Federation).

The settings are the deployment's (`trainer.federated.settings.RunSettings`, used by
`trainer.federated.server`): ``clip-range`` 8, ``max-weight`` 10000, and Flower's defaults
``quantization_range`` 2**22 and ``modulus_range`` 2**32, which `SecAggPlusWorkflow` is
constructed with there.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_combine,
    factor_extract,
    parameters_addition,
    parameters_mod,
    parameters_multiply,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import dequantize, quantize
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.supercore.primitives.asymmetric import generate_key_pairs
from numpy.typing import NDArray

from trainer.federated import FederatedError
from trainer.federated.wire import Arrays

QUANTIZATION_RANGE = 4194304  # Flower's SecAggPlusWorkflow default (2**22), as deployed
MODULUS_RANGE = 4294967296  # Flower's default (2**32)


@dataclass(frozen=True)
class SecAggResult:
    mean: Arrays  # what the coordinator's strategy receives: the dequantised weighted mean
    relative_error: float  # ||mean - exact weighted mean|| / ||exact weighted mean||


def secagg_mean(
    deltas: Sequence[Sequence[NDArray[np.float32]]],
    weights: Sequence[int],
    clipping_range: float,
    max_weight: float,
    quantization_range: int = QUANTIZATION_RANGE,
    modulus_range: int = MODULUS_RANGE,
) -> SecAggResult:
    """The weighted mean of `deltas` as SecAgg+ delivers it (see the module docstring).

    Raises FederatedError for fewer than two nodes (SecAgg+ refuses them), a weight that is
    not positive, or one above `max_weight` (Flower only warns: the sum would overflow).
    """
    k = len(deltas)
    if k < 2 or len(weights) != k:
        raise FederatedError(
            f"SecAgg+ needs at least two nodes, each with a weight: got {k} updates and "
            f"{len(weights)} weights"
        )
    if any(w <= 0 or w > max_weight for w in weights):
        raise FederatedError(
            f"weights {list(weights)}: each must be in (0, max_weight = {max_weight}]"
        )
    keys = [generate_key_pairs() for _ in range(k)]
    seeds = [os.urandom(32) for _ in range(k)]
    dims: list[tuple[int, ...]] | None = None
    total: list[NDArray[np.int64]] | None = None
    for i, (delta, n) in enumerate(zip(deltas, weights, strict=True)):
        q_ratio = round(n / max_weight * quantization_range)
        scaled = parameters_multiply([np.asarray(a) for a in delta], q_ratio / quantization_range)
        vector = factor_combine(q_ratio, quantize(scaled, clipping_range, quantization_range))
        dims = [a.shape for a in vector]
        vector = parameters_addition(vector, pseudo_rand_gen(seeds[i], modulus_range, dims))
        for j in range(k):
            if j == i:
                continue
            shared = generate_shared_key(keys[i][0], keys[j][1])
            pairwise = pseudo_rand_gen(shared, modulus_range, dims)
            op = parameters_addition if i > j else parameters_subtraction
            vector = op(vector, pairwise)
        masked = parameters_mod(vector, modulus_range)
        total = masked if total is None else parameters_addition(total, masked)
    if total is None or dims is None:  # unreachable: k >= 2 was checked above
        raise ValueError("SecAgg+ needs at least two updates to aggregate")
    for seed in seeds:
        total = parameters_subtraction(total, pseudo_rand_gen(seed, modulus_range, dims))
    q_total, summed = factor_extract(parameters_mod(total, modulus_range))
    mean = dequantize(summed, clipping_range, quantization_range)
    offset = -(k - 1) * clipping_range
    out: Arrays = [
        ((vec + offset) * (quantization_range / int(q_total))).astype(np.float32) for vec in mean
    ]
    exact = _weighted_mean(deltas, weights)
    err = np.sqrt(sum(float(((a - b) ** 2).sum()) for a, b in zip(out, exact, strict=True)))
    ref = np.sqrt(sum(float((b**2).sum()) for b in exact))
    return SecAggResult(out, float(err / ref) if ref > 0 else 0.0)


def _weighted_mean(
    deltas: Sequence[Sequence[NDArray[np.float32]]], weights: Sequence[int]
) -> Arrays:
    total = float(sum(weights))
    out = [np.zeros_like(np.asarray(a, np.float64)) for a in deltas[0]]
    for delta, n in zip(deltas, weights, strict=True):
        for acc, d in zip(out, delta, strict=True):
            acc += (n / total) * np.asarray(d, np.float64)
    return [a.astype(np.float32) for a in out]
