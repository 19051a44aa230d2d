"""Refit a bundle's heads on the data it was trained on, its weights unchanged.

``python -m trainer.refit_heads --bundle DIR --manifest CSV [--manifest CSV...] --version V
--out DIR`` rebuilds the bundle's torch model from its verified ``weights.safetensors``,
then exports it again through `exporters.fame_bundle.export_fame_bundle`: the
out-of-distribution head is fitted on the train split, its threshold and the calibration
temperature on val, as a training run's export does. Use it when the exporter's heads
improve (bundle 0.2.1 got the layered OOD score of `trainer.ood` this way), so the weights
need not be trained again.

The data must be the data the bundle was trained and selected on: every ``--manifest``
must have the sha256 the bundle records, or the command stops before fitting anything.
The new bundle keeps the old one's provenance, mask threshold and figures, and records
what was refitted from which bundle (``training.refitted``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.bundle import Bundle, Manifest, load_bundle, sha256_file
from appliance.errors import BundleError
from trainer.data import ArraySet, load_datasets, manifest_label
from trainer.models import FameNodeNet
from trainer.ood import LAYER_NAMES, OOD_LAYERS
from trainer.weights import WEIGHTS_FILE, load_bundle_net

# What --ood-layers names: the OOD head's layers (trainer.ood).
OOD_LAYER_SETS = {"encoders": OOD_LAYERS, "all": LAYER_NAMES}

# Written again by the export, from the refitted heads and the rebuilt model.
_REFITTED_KEYS = ("model", "calibration", "ood", "uncertainty")


class RefitError(BundleError):
    """The bundle cannot be refitted on the data given (not its data, no weights)."""


@dataclass(frozen=True)
class Adaptation:
    """What a caller changed in the rebuilt net before the export (`trainer.probe`,
    `trainer.seed_ensemble`): what to say it did, its own record in ``training``, the val
    figures that replace the old bundle's, and the mask threshold chosen on val for the
    changed net (None: the old figures / threshold still hold)."""

    what: str
    training: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None
    mask_threshold: float | None = None


# Changes the net in place, given the bundle's train and val splits and its verified manifest.
Adapt = Callable[[FameNodeNet, Mapping[str, ArraySet], Manifest], Adaptation]


def check_data(bundle: Bundle, manifests: Sequence[Path]) -> None:
    """Raise `RefitError` unless `manifests` are exactly the ones the bundle was trained on."""
    recorded: Mapping[str, str] = bundle.manifest.training.get("manifests", {})
    if not recorded:
        raise RefitError(
            f"{bundle.path}: the bundle records no data manifests, so its training data "
            "cannot be checked; refit only bundles trained by trainer.train"
        )
    given = {manifest_label(m): m for m in manifests}
    if set(given) != set(recorded):
        raise RefitError(
            f"{bundle.path} was trained on {sorted(recorded)}, got {sorted(given)}: pass "
            "exactly the manifests it was trained on"
        )
    for name, path in given.items():
        digest = sha256_file(path)
        if digest != recorded[name]:
            raise RefitError(
                f"{path} has sha256 {digest[:12]}..., the bundle was trained on "
                f"{recorded[name][:12]}...: the data changed since; train a new bundle instead"
            )


def refit(
    bundle_dir: Path,
    manifests: Sequence[Path],
    version: str,
    out: Path,
    cache_dir: Path,
    *,
    adapt: Adapt | None = None,
    ood_layers: tuple[str, ...] = OOD_LAYERS,
) -> Path:
    """Export `bundle_dir`'s weights again as `version` at `out`, heads refitted; `out`.

    `adapt`, when given, changes the rebuilt net first (on the train and val splits only)
    and says what it did; the heads are then fitted to the changed net, the OOD head over
    `ood_layers`."""
    from exporters.fame_bundle import BundleIdentity, export_fame_bundle

    bundle = load_bundle(bundle_dir)  # every file's sha256 checked before anything is read
    m = bundle.manifest
    if not bundle.has(WEIGHTS_FILE):
        raise RefitError(f"{bundle_dir}: no {WEIGHTS_FILE}, so there is no model to refit")
    if version == m.version:
        raise RefitError(f"version {version} is the bundle's own: give the refit a new one")
    check_data(bundle, manifests)
    net = load_bundle_net(bundle)
    data = load_datasets(list(manifests), m.preprocess_params(), cache_dir)
    heads = (
        "out-of-distribution head (train split), its threshold and the calibration "
        "temperature (val split) refitted by trainer.refit_heads"
    )
    what, evaluation = f"{heads}; weights unchanged", m.evaluation
    threshold = float(m.postprocessing["mask_threshold"])
    training: dict[str, Any] = {k: v for k, v in m.training.items() if k not in _REFITTED_KEYS}
    if adapt is not None:
        change = adapt(net, {"train": data["train"], "val": data["val"]}, m)
        what = f"{change.what}; then {heads}"
        training.update(change.training)
        evaluation = evaluation if change.evaluation is None else change.evaluation
        threshold = threshold if change.mask_threshold is None else change.mask_threshold
    training["refitted"] = {
        "from": f"{m.name}@{m.version}",
        "manifest_sha256": sha256_file(bundle.path / "manifest.json"),
        "what": what,
    }
    with tempfile.TemporaryDirectory(prefix="fame-refit-") as tmp:
        extra: dict[str, Path] = {}
        if bundle.has("training_log.json"):
            log = Path(tmp) / "training_log.json"
            log.write_bytes(bundle.data("training_log.json"))
            extra["training_log.json"] = log
        return export_fame_bundle(
            net,
            out,
            identity=BundleIdentity(
                name=m.name,
                version=version,
                preprocessing=m.preprocessing,
                mask_threshold=threshold,
                min_lesion_area_px=float(m.postprocessing["min_lesion_area_px"]),
            ),
            train=data["train"],
            val=data["val"],
            work_dir=Path(tmp) / "work",
            training=training,
            evaluation=evaluation,
            extra_files=extra,
            ood_layers=ood_layers,
        )


def refit_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """The options of a command that exports a bundle again on its own data (this one,
    `trainer.probe`): --bundle, --manifest (repeated), --version, --out, --cache-dir,
    --ood-layers (a key of `OOD_LAYER_SETS`)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, action="append", required=True)
    parser.add_argument("--version", required=True, help="the new bundle's version")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache"))
    parser.add_argument(
        "--ood-layers",
        choices=sorted(OOD_LAYER_SETS),
        default="encoders",
        help="the layers the out-of-distribution head scores: the MAU-Net's four encoder "
        "levels (since 0.2.8), or all six of bundles 0.2.1 to 0.2.7 (with the bottleneck "
        "and the classifier's features)",
    )
    return parser


def refit_args(a: argparse.Namespace, adapt: Adapt | None = None) -> Path:
    """`refit` with the options of `refit_parser`, parsed."""
    return refit(
        a.bundle,
        a.manifest,
        a.version,
        a.out,
        a.cache_dir,
        adapt=adapt,
        ood_layers=OOD_LAYER_SETS[a.ood_layers],
    )


def main(argv: list[str] | None = None) -> int:
    a = refit_parser("python -m trainer.refit_heads", __doc__).parse_args(argv)
    try:
        out = refit_args(a)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    post = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["postprocessing"]
    print(f"wrote {out} (ood_threshold {post['ood_threshold']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
