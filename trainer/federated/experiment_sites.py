"""The three institutions of the federation experiments and their arrays (the I/O edge).

- ``busi``: BUSI (Egypt, `busi/manifest.csv`), split by near-duplicate group;
- ``logiq7``: BUS-BRA's GE Logiq 7 images (`busbra/manifest.csv`, ``site = logiq7``);
- ``aplio300-usystems``: BUS-BRA's Toshiba Aplio 300 and U-Systems images together (the
  issue's third hospital; U-Systems alone has 19 training images).

BUS-BRA's splits are by patient, per scanner. Each site keeps its own train split (capped
at ``max_train`` images, a seeded random subset, to fit the compute budget), its val split
(selection: the round and the mask threshold) and its test split (the figures), both whole.
Arrays come from `trainer.data.load_dataset` (the node's own preprocessing, cached).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from appliance.preprocess import PreprocessParams
from trainer.data import ArraySet, DataError, load_dataset

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


@dataclass(frozen=True)
class SiteSpec:
    """One institution: a manifest and the values of its ``site`` column to keep (empty:
    every row)."""

    name: str
    manifest: Path
    scanners: tuple[str, ...] = ()


@dataclass(frozen=True)
class Site:
    name: str
    train: ArraySet
    val: ArraySet
    test: ArraySet
    train_available: int  # before the cap
    # test-image indices per scanner, for a site of several scanners (else empty)
    test_scanners: dict[str, NDArray[np.int64]] = field(default_factory=dict)


def default_sites(data_root: Path = SHARED_DATA) -> tuple[SiteSpec, ...]:
    """The issue's three institutions under `data_root` (``../shared/data``)."""
    return (
        SiteSpec("busi", data_root / "busi" / "manifest.csv"),
        SiteSpec("logiq7", data_root / "busbra" / "manifest.csv", ("logiq7",)),
        SiteSpec(
            "aplio300-usystems",
            data_root / "busbra" / "manifest.csv",
            ("aplio300", "usystems"),
        ),
    )


def load_sites(
    specs: Sequence[SiteSpec],
    params: PreprocessParams,
    cache_dir: Path | None,
    max_train: int,
    seed: int,
) -> list[Site]:
    """Every site's arrays, its train split capped at `max_train` (seeded subset)."""
    sites = []
    for index, spec in enumerate(specs):
        splits = load_dataset(spec.manifest, params, cache_dir)
        scanner_of = _scanners(spec)
        keep = None if scanner_of is None else set(scanner_of)
        train, val, test = (subset(splits[s], keep) for s in ("train", "val", "test"))
        if min(len(train), len(val), len(test)) == 0:
            raise DataError(
                f"site {spec.name}: train / val / test have {len(train)} / {len(val)} / "
                f"{len(test)} images in {spec.manifest} (scanners {spec.scanners or 'all'}); "
                "every split needs images: check the site column values"
            )
        rng = np.random.default_rng(seed + 101 * index)
        available = len(train)
        if available > max_train:
            chosen = np.sort(rng.choice(available, size=max_train, replace=False))
            train = take(train, chosen)
        groups: dict[str, NDArray[np.int64]] = {}
        if scanner_of is not None and len(spec.scanners) > 1:
            for scanner in spec.scanners:
                groups[scanner] = np.array(
                    [i for i, n in enumerate(test.names) if scanner_of[n] == scanner], np.int64
                )
        sites.append(Site(spec.name, train, val, test, available, groups))
    return sites


def pooled(sites: Sequence[Site], name: str = "pooled") -> Site:
    """The sites' train and val splits together (centralised training); test stays per site."""
    return Site(
        name,
        concat([s.train for s in sites]),
        concat([s.val for s in sites]),
        concat([s.test for s in sites]),
        sum(s.train_available for s in sites),
    )


def take(data: ArraySet, index: np.ndarray) -> ArraySet:
    return ArraySet(
        images=data.images[index],
        masks=data.masks[index],
        labels=data.labels[index],
        names=tuple(data.names[int(i)] for i in index),
    )


def subset(data: ArraySet, keep: set[str] | None) -> ArraySet:
    if keep is None:
        return data
    return take(data, np.array([i for i, n in enumerate(data.names) if n in keep], dtype=int))


def concat(parts: Sequence[ArraySet]) -> ArraySet:
    return ArraySet(
        images=np.concatenate([p.images for p in parts]),
        masks=np.concatenate([p.masks for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
        names=tuple(n for p in parts for n in p.names),
    )


def _scanners(spec: SiteSpec) -> dict[str, str] | None:
    """Manifest-relative image path -> scanner, for the spec's scanners (None: every row)."""
    if not spec.scanners:
        return None
    with spec.manifest.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "site" not in reader.fieldnames:
            raise DataError(
                f"{spec.manifest} has no 'site' column, but site {spec.name} selects scanners "
                f"{spec.scanners}: use BUS-BRA's manifest.csv or drop the scanner filter"
            )
        rows = [r for r in reader if r["site"] in spec.scanners]
    if not rows:
        raise DataError(f"no row of {spec.manifest} has site in {spec.scanners}")
    return {r["image"]: r["site"] for r in rows}
