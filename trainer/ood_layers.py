"""Which layers an out-of-distribution head should score, measured on one bundle's network.

``python -m trainer.ood_layers --bundle DIR --manifest CSV [--manifest CSV...] --out JSON``
fits `trainer.ood.LayeredOODStats` on the bundle's train split over each candidate set of
layers (`CANDIDATES`), sets each one's threshold to flag `OOD_FLAGGED_SHARE` of val, as the
export does, and reports what each would flag: the test images (in distribution: the fewer
the better), the 24 ultrasound phantoms a shipped model must flag
(`appliance.phantom.ood_check_specs`), 60 other phantoms to choose on (`selection_specs`:
other seeds, sizes, angles, echogenicities and posteriors, lobulated and lesion-free ones;
the 24 stay the test), and the non-breast ultrasound frames of pydicom-data where it is
installed. For each phantom set it gives the lowest score over the threshold: how near a
head came to letting one through. Each layer is also scored alone. Nothing is exported; the
data manifests must be the bundle's own (`trainer.refit_heads.check_data`).

A head's layers are a choice about the network it is fitted to, so measure every candidate
network: bundle 0.2.7 showed that one network's head lets phantoms through where another's
does not (docs/RESULTS.md). This measurement chose the head bundles export since 0.2.8, the
four encoder levels (`trainer.ood.OOD_LAYERS`).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from appliance.bundle import load_bundle
from appliance.errors import BundleError
from appliance.io.sample_data import ultrasound_sample_frames
from appliance.phantom import PhantomSpec, make_phantom, ood_check_specs
from appliance.preprocess import PreprocessParams, preprocess
from exporters.fame_bundle import OOD_FLAGGED_SHARE
from trainer.data import load_datasets
from trainer.metrics import roc_auc
from trainer.ood import LAYER_NAMES, LayeredOODStats, ood_features, threshold_at
from trainer.refit_heads import check_data
from trainer.weights import load_bundle_net

CANDIDATES: dict[str, tuple[str, ...]] = {
    "all six (0.2.1 to 0.2.7)": LAYER_NAMES,
    "without the classifier": LAYER_NAMES[:5],
    "the four encoder levels": LAYER_NAMES[:4],  # trainer.ood.OOD_LAYERS: shipped since 0.2.8
    "encoder levels 2 to 4": LAYER_NAMES[1:4],
}
Features = list[NDArray[np.float64]]


def selection_specs(n: int = 60) -> list[PhantomSpec]:
    """`n` phantoms to choose a head on, none of them one of `ood_check_specs` (seeds from
    100): lesion kinds, posteriors, echogenicities, sizes and angles varied."""
    rng = np.random.default_rng(12345)
    return [
        PhantomSpec(
            seed=100 + i,
            lesion=("ellipse", "lobulated", "none")[i % 3],
            echogenicity=float(rng.choice([0.0, 0.25, 0.5, 1.0, 1.5, 2.0])),
            posterior=("none", "shadow", "enhancement")[(i // 3) % 3],
            semi_axes_px=(float(rng.uniform(25, 80)), float(rng.uniform(15, 50))),
            angle_deg=float(rng.uniform(-30, 30)),
        )
        for i in range(n)
    ]


def head_figures(stats: LayeredOODStats, sets: dict[str, Features]) -> dict[str, Any]:
    """What the head `stats` flags of each set (every layer's features, `ood_features`),
    its threshold flagging `OOD_FLAGGED_SHARE` of val."""

    def scores(name: str) -> NDArray[np.float64]:
        return stats.score(sets[name])

    threshold = threshold_at(scores("val"), OOD_FLAGGED_SHARE)
    out: dict[str, Any] = {
        "threshold": round(threshold, 6),
        "test_flagged": round(float(np.mean(scores("test") > threshold)), 4),
    }
    for name in ("check_phantoms", "selection_phantoms", "ultrasound_frames"):
        if name not in sets:
            continue
        margin = scores(name) / threshold
        out[name] = {
            "n": len(margin),
            "flagged": int(np.sum(margin > 1.0)),
            "least_margin": round(float(margin.min()), 3),
        }
    if "ultrasound_frames" in sets:
        inside, outside = scores("test"), scores("ultrasound_frames")
        is_out = np.r_[np.zeros(len(inside), bool), np.ones(len(outside), bool)]
        auroc = roc_auc(np.r_[inside, outside], is_out)
        out["auroc_test_vs_frames"] = None if auroc is None else round(float(auroc), 4)
    return out


def measure(bundle_dir: Path, manifests: Sequence[Path], cache_dir: Path) -> dict[str, Any]:
    """Every candidate head's and every single layer's figures on `bundle_dir`'s network."""
    bundle = load_bundle(bundle_dir)
    check_data(bundle, manifests)
    params = bundle.manifest.preprocess_params()
    net = load_bundle_net(bundle)
    data = load_datasets(list(manifests), params, cache_dir)
    images = {split: data[split].images for split in ("train", "val", "test")}
    images["check_phantoms"] = _preprocessed(
        [make_phantom(s).image for s in ood_check_specs()], params
    )
    images["selection_phantoms"] = _preprocessed(
        [make_phantom(s).image for s in selection_specs()], params
    )
    frames = [f for file in ultrasound_sample_frames(max_frames=16) for f in file]
    if frames:
        images["ultrasound_frames"] = _preprocessed(frames, params)
    sets = {name: ood_features(net, x) for name, x in images.items()}
    labels = data["train"].labels

    def fitted(layers: tuple[str, ...]) -> LayeredOODStats:
        return LayeredOODStats.fit(sets["train"], labels, sets["val"], layers)

    heads = {
        name: {"layers": list(layers), **head_figures(fitted(layers), sets)}
        for name, layers in CANDIDATES.items()
    }
    single = {n: head_figures(fitted((n,)), sets) for n in LAYER_NAMES}
    return {
        "model": bundle.version_label,
        "measured": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or 'CPU'}",
        "n": {name: len(x) for name, x in images.items()},
        "flagged_share_of_val": OOD_FLAGGED_SHARE,
        "heads": heads,
        "single_layers": single,
    }


def _preprocessed(frames: Sequence[NDArray[Any]], params: PreprocessParams) -> NDArray[np.float32]:
    return np.stack([preprocess(f, params)[0] for f in frames]).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.ood_layers", description=__doc__)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, action="append", required=True)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache"))
    a = parser.parse_args(argv)
    try:
        result = measure(a.bundle, a.manifest, a.cache_dir)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    for name, head in result["heads"].items():
        check, chosen = head["check_phantoms"], head["selection_phantoms"]
        print(
            f"{name}: test flagged {head['test_flagged']:.3f}; phantoms to choose on "
            f"{chosen['flagged']}/{chosen['n']} (least {chosen['least_margin']}); check "
            f"{check['flagged']}/{check['n']} (least {check['least_margin']})",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
