"""Build one bundle from several seeds of one recipe: their MAU-Nets averaged as an ensemble.

``python -m trainer.seed_ensemble --bundle DIR --member DIR [--member DIR...] --manifest CSV
[--manifest CSV...] --version V --out DIR`` takes the verified single-model bundle
``--bundle`` (its classifier, its provenance) and the MAU-Nets of the verified ``--member``
bundles (the same recipe from other seeds, each trained on the whole train split, with the
same preprocessing), and exports a bundle whose segmenter is their `FoldEnsemble`: the
maps averaged pixel for pixel, their disagreement a per-image uncertainty, as the three-fold
ensemble's. The mask threshold is chosen again on val for the averaged map, the heads are
refitted on the bundle's own data (`trainer.refit_heads`: every manifest must have the
sha256 the bundle records), and test is not read.

What it is for: the teacher of `trainer.distill`. Three MAU-Nets weigh about 75 MB, over the
40 MB a shipped bundle may; distillation teaches one student MAU-Net the averaged map
(docs/RESULTS.md, "The seed ensemble"). The classifier is ``--bundle``'s, given the
averaged map instead of its own MAU-Net's. A bundle with a layer probe is refused: the probe
was fitted on one MAU-Net's activations, which an ensemble does not have; name the bundle
the probe was fitted to (``training.refitted.from``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from appliance.bundle import Manifest
from appliance.errors import BundleError
from trainer.data import ArraySet
from trainer.fold_report import member_bundles
from trainer.loops import validate
from trainer.models import FameNodeNet, FoldEnsemble, MAUNet
from trainer.refit_heads import Adaptation, RefitError, refit_args, refit_parser


def average_seeds(
    net: FameNodeNet,
    members: Sequence[MAUNet],
    runs: Sequence[Mapping[str, Any]],
    val: ArraySet,
    min_area_px: float,
) -> Adaptation:
    """Set `net`'s segmenter to the ensemble of its own MAU-Net and `members` (in place),
    choose the threshold of the averaged map on `val`; what the bundle records of it.

    Raises `RefitError` where `net` is not one MAU-Net with its own classifier."""
    if net.probe is not None:
        raise RefitError(
            "the bundle classifies with a layer probe fitted on one MAU-Net's activations, "
            "which an ensemble does not have: name the bundle the probe was fitted to "
            "(its manifest's training.refitted.from)"
        )
    if not isinstance(net.segmenter, MAUNet):
        raise RefitError("the bundle's segmenter is already an ensemble: name a single model")
    before = validate(net, val, min_area_px)
    net.segmenter = FoldEnsemble([net.segmenter, *members])
    after = validate(net, val, min_area_px)
    from trainer.train import evaluation_record

    return Adaptation(
        what=(
            f"segmenter replaced by the mean map of {net.segmenter.k} MAU-Nets (this bundle's "
            "and the members' below, each trained on the whole train split from its own "
            "seed); mask threshold chosen again on val; classifier unchanged"
        ),
        training={
            "seed_ensemble": {
                "members": [dict(r) for r in runs],
                "val_dice_single": round(float(before["dice"]), 4),
                "val_dice_ensemble": round(float(after["dice"]), 4),
                "mask_threshold_single": before["mask_threshold"],
                "mask_threshold": after["mask_threshold"],
            }
        },
        evaluation={"val": evaluation_record(after)},
        mask_threshold=float(after["mask_threshold"]),
    )


def main(argv: list[str] | None = None) -> int:
    parser = refit_parser("python -m trainer.seed_ensemble", __doc__)
    parser.add_argument(
        "--member",
        type=Path,
        action="append",
        required=True,
        help="a bundle of the same recipe from another seed; repeat for several",
    )
    parser.add_argument("--threads", type=int, default=2)
    a = parser.parse_args(argv)
    torch.set_num_threads(a.threads)
    # Every bundle verified, and of the base bundle's preprocessing, before any data is read.
    try:
        segmenters, runs = member_bundles([a.bundle, *a.member])
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    def adapt(net: FameNodeNet, data: Mapping[str, ArraySet], manifest: Manifest) -> Adaptation:
        area = float(manifest.postprocessing["min_lesion_area_px"])
        change = average_seeds(net, segmenters[1:], runs, data["val"], area)
        print(f"seed ensemble: {json.dumps(change.training['seed_ensemble'])}", flush=True)
        return change

    try:
        out = refit_args(a, adapt)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    m = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    val = {k: v for k, v in m["evaluation"]["val"].items() if k != "note"}
    print(f"wrote {out}: val {json.dumps(val)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
