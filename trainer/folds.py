"""K-fold assignment of the training split for the MAU-Net cross-validation ensemble.

The FAME paper trains its segmentation ensemble by three-fold cross-validation: each fold
model trains on K-1 folds of the training split and is held out from the K-th. Folds are
made of *groups*, never of single rows, where the data set says which rows belong together:

- BUSI (version 2): the ``group`` column (near-duplicate frames of one scan or examination;
  splitting a group would put a near-copy of a held-out image into the fold's training set);
- BUS-BRA: the ``patient`` column (both breasts / several views of one woman);
- otherwise the row itself.

Groups are spread over the folds stratified by class as far as the groups allow: a greedy
assignment, largest groups first (ties in a seeded random order), each to the fold whose
per-class share of the total stays the most even. The same keys, labels, K and seed always
give the same folds.

**Epoch selection.** Each fold model keeps the epoch with the best Dice on its *own
held-out fold*, not on the val split: the held-out fold is what the cross-validation sets
aside for exactly this, and val stays untouched by all K selections so that it can set the
ensemble's mask and uncertainty thresholds, select the classifier, and compare the ensemble
with each single fold without any of them having been chosen on it.

`assign_folds` is the pure core (keys and labels in, fold indices out); `group_keys` reads
the keys of an `ArraySet`'s rows from the manifests it was loaded from.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from trainer.data import ArraySet

DEFAULT_FOLDS = 3
GROUP_COLUMNS = ("group", "patient")  # in this order: the first a manifest has is used


class FoldError(ValueError):
    """The folds cannot be made: too few groups, or rows the manifests do not name."""


def assign_folds(
    keys: Sequence[str], labels: Sequence[int] | NDArray[np.int64], k: int, seed: int
) -> NDArray[np.int64]:
    """The fold (0..k-1) of every row; rows with the same key share a fold.

    Parameters
    ----------
    keys:
        One group key per row (`group_keys`); equal keys are one group.
    labels:
        One class index per row, for the stratification.
    k:
        Number of folds, >= 2.
    seed:
        Orders groups of equal size; the same seed gives the same folds.

    Raises
    ------
    FoldError
        fewer groups than folds, or keys and labels of different lengths.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if len(keys) != len(labels):
        raise FoldError(f"{len(keys)} group keys for {len(labels)} labels: give one per row")
    if k < 2:
        raise FoldError(f"need at least 2 folds, got {k}")
    groups: dict[str, list[int]] = {}
    for row, key in enumerate(keys):
        groups.setdefault(key, []).append(row)
    if len(groups) < k:
        raise FoldError(
            f"{len(groups)} group(s) cannot fill {k} folds: use fewer folds or more data"
        )
    classes = sorted(set(int(c) for c in labels))
    column = {c: i for i, c in enumerate(classes)}
    total = np.zeros(len(classes))
    for c in labels:
        total[column[int(c)]] += 1
    names = sorted(groups)
    random.Random(seed).shuffle(names)
    # Largest first (stable sort keeps the seeded order among equals): the small groups
    # placed last even out what the large ones left uneven.
    names.sort(key=lambda g: -len(groups[g]))
    counts = np.zeros((k, len(classes)))
    fold_of = np.full(len(labels), -1, dtype=np.int64)
    for name in names:
        rows = groups[name]
        add = np.zeros(len(classes))
        for r in rows:
            add[column[int(labels[r])]] += 1
        # Cost of each choice: how uneven the folds' class shares would become (the sum of
        # squared shares is smallest when every fold holds 1/k of every class); ties go to
        # the smaller fold, then the lower index.
        costs = []
        for f in range(k):
            trial = counts.copy()
            trial[f] += add
            costs.append((float(((trial / total) ** 2).sum()), float(counts[f].sum()), f))
        best = min(costs)[2]
        counts[best] += add
        fold_of[rows] = best
    return fold_of


def fold_masks(
    folds: NDArray[np.int64], k: int
) -> list[tuple[NDArray[np.bool_], NDArray[np.bool_]]]:
    """(train rows, held-out rows) of each fold model: fold i trains on every other fold."""
    return [(folds != i, folds == i) for i in range(k)]


@dataclass(frozen=True)
class ManifestKeys:
    """The group key of each image of one manifest, as `trainer.data` names its rows."""

    keys: dict[str, str]

    @classmethod
    def read(cls, manifest: Path, prefix: str) -> ManifestKeys:
        """Keys of `manifest`'s rows; `prefix` is prepended to names and keys (the data
        set's folder name when several manifests are joined, '' for one)."""
        with manifest.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            column = next((c for c in GROUP_COLUMNS if c in columns), None)
            keys: dict[str, str] = {}
            for row in reader:
                image = row["image"].strip()
                value = (row.get(column) or "").strip() if column else ""
                key = f"{column}:{value}" if value else f"row:{image}"
                keys[f"{prefix}{image}"] = f"{manifest.parent.name}/{key}"
        return cls(keys)


def group_keys(manifests: Sequence[Path], arrays: ArraySet) -> list[str]:
    """The group key of each row of `arrays` (loaded by `trainer.data.load_datasets` from
    `manifests`): ``<data set>/group:<g>``, ``<data set>/patient:<p>`` or
    ``<data set>/row:<image>``.

    Raises FoldError for a row no manifest names (the arrays are from other manifests).
    """
    several = len(manifests) > 1
    known: dict[str, str] = {}
    for m in manifests:
        known.update(ManifestKeys.read(m, f"{m.parent.name}/" if several else "").keys)
    missing = [n for n in arrays.names if n not in known]
    if missing:
        raise FoldError(
            f"{len(missing)} row(s) such as {missing[0]!r} are in none of the manifests "
            f"{[str(m) for m in manifests]}: pass the manifests the arrays were loaded from"
        )
    return [known[n] for n in arrays.names]


def subset(arrays: ArraySet, rows: NDArray[np.bool_]) -> ArraySet:
    """The rows of `arrays` selected by the boolean mask `rows`."""
    index = np.flatnonzero(rows)
    return ArraySet(
        images=arrays.images[index],
        masks=arrays.masks[index],
        labels=arrays.labels[index],
        names=tuple(arrays.names[i] for i in index),
    )


__all__ = [
    "DEFAULT_FOLDS",
    "FoldError",
    "ManifestKeys",
    "assign_folds",
    "fold_masks",
    "group_keys",
    "subset",
]
