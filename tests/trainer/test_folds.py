"""K-fold assignment by group (`trainer.folds`): no group split, every row once, seeded."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from trainer.data import ArraySet
from trainer.folds import FoldError, assign_folds, fold_masks, group_keys, subset

BUSI = Path("/work/shared/data/busi/manifest.csv")
BUSBRA = Path("/work/shared/data/busbra/manifest.csv")


def _groups(n_groups: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Groups of 1..4 rows, each of one class (as BUSI's near-duplicate groups are)."""
    rng = np.random.default_rng(seed)
    keys, labels = [], []
    for g in range(n_groups):
        label = int(rng.choice(3, p=[0.2, 0.55, 0.25]))
        for _ in range(int(rng.integers(1, 5))):
            keys.append(f"g{g}")
            labels.append(label)
    return keys, np.array(labels)


def test_no_group_in_two_folds_and_every_row_in_exactly_one() -> None:
    keys, labels = _groups(90)
    folds = assign_folds(keys, labels, 3, seed=7)
    assert folds.shape == (len(keys),) and set(folds.tolist()) == {0, 1, 2}
    for key in set(keys):
        assert len({int(folds[i]) for i, k in enumerate(keys) if k == key}) == 1, key
    masks = fold_masks(folds, 3)
    held = np.stack([h for _, h in masks])
    assert (held.sum(axis=0) == 1).all()  # each row held out by exactly one fold model
    for fit, out in masks:
        assert not (fit & out).any() and (fit | out).all()


def test_folds_are_deterministic_and_depend_on_the_seed() -> None:
    keys, labels = _groups(60)
    a = assign_folds(keys, labels, 3, seed=1)
    assert (a == assign_folds(keys, labels, 3, seed=1)).all()
    assert any((a != assign_folds(keys, labels, 3, seed=s)).any() for s in (2, 3, 4))


def test_folds_are_stratified_by_class_and_balanced_in_size() -> None:
    keys, labels = _groups(150, seed=3)
    folds = assign_folds(keys, labels, 3, seed=0)
    sizes = np.bincount(folds, minlength=3)
    assert sizes.max() - sizes.min() <= 4  # groups hold at most 4 rows
    for c in range(3):
        per_fold = np.bincount(folds[labels == c], minlength=3)
        share = per_fold / per_fold.sum()
        assert np.abs(share - 1 / 3).max() < 0.06, (c, per_fold)


def test_too_few_groups_and_mismatched_lengths_are_refused() -> None:
    with pytest.raises(FoldError, match="2 group"):
        assign_folds(["a", "a", "b"], [0, 0, 1], 3, seed=0)
    with pytest.raises(FoldError, match="2 group keys for 3 labels"):
        assign_folds(["a", "b"], [0, 1, 2], 2, seed=0)
    with pytest.raises(FoldError, match="at least 2 folds"):
        assign_folds(["a", "b"], [0, 1], 1, seed=0)


def _arrays(names: list[str]) -> ArraySet:
    n = len(names)
    return ArraySet(
        images=np.zeros((n, 4, 4), np.float32),
        masks=np.zeros((n, 4, 4), np.uint8),
        labels=np.zeros(n, np.int64),
        names=tuple(names),
    )


def _train_rows(manifest: Path, prefix: str) -> list[dict[str, str]]:
    with manifest.open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "train"]
    return [{**r, "name": prefix + r["image"]} for r in rows]


@pytest.mark.skipif(not (BUSI.is_file() and BUSBRA.is_file()), reason="shared data absent")
def test_real_manifests_keep_busi_groups_and_busbra_patients_together() -> None:
    busi, busbra = _train_rows(BUSI, "busi/"), _train_rows(BUSBRA, "busbra/")
    arrays = _arrays([r["name"] for r in busi + busbra])
    keys = group_keys([BUSI, BUSBRA], arrays)
    assert keys[0] == f"busi/group:{busi[0]['group']}"
    assert keys[len(busi)] == f"busbra/patient:{busbra[0]['patient']}"
    labels = [r["label"] for r in busi + busbra]
    classes = sorted(set(labels))
    folds = assign_folds(keys, [classes.index(x) for x in labels], 3, seed=2026)
    by_key: dict[str, set[int]] = {}
    for key, f in zip(keys, folds, strict=True):
        by_key.setdefault(key, set()).add(int(f))
    assert all(len(v) == 1 for v in by_key.values())
    assert len({k for k in keys if k.startswith("busi/")}) < len(busi)  # groups do exist
    sizes = np.bincount(folds)
    assert sizes.min() > 0.3 * len(keys)


def test_a_manifest_without_group_columns_keys_each_row_and_unknown_rows_fail(
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "site" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_text("image,label,masks,split\na.png,benign,,train\nb.png,normal,,train\n")
    assert group_keys([manifest], _arrays(["a.png", "b.png"])) == [
        "site/row:a.png",
        "site/row:b.png",
    ]
    with pytest.raises(FoldError, match="in none of the manifests"):
        group_keys([manifest], _arrays(["c.png"]))


def test_subset_selects_rows_in_order() -> None:
    arrays = _arrays(["a", "b", "c"])
    picked = subset(arrays, np.array([True, False, True]))
    assert picked.names == ("a", "c") and len(picked.images) == 2
