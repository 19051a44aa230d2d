"""Reproducibility: one call that seeds every random generator training uses."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int, *, threads: int | None = None) -> torch.Generator:
    """Seed Python, NumPy and torch, pick deterministic kernels where cheap.

    Parameters
    ----------
    seed:
        The run's seed; recorded in the bundle manifest.
    threads:
        If given, the number of intra-op CPU threads torch may use.

    Returns
    -------
    A `torch.Generator` seeded with `seed`, for the data order and augmentation, so that
    they do not depend on how many random numbers model initialisation consumed.
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if threads is not None:
        torch.set_num_threads(threads)
    # CPU convolutions are deterministic already; this makes a nondeterministic op raise
    # instead of silently varying (warn_only keeps ops without a deterministic twin usable).
    torch.use_deterministic_algorithms(True, warn_only=True)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
