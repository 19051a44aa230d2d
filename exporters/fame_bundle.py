"""A `FameNodeNet` as a complete, verified model bundle: the one export both the trainer
(`trainer.train.export_checkpoint`) and the federation (`appliance.federation.deploy`) use.

`export_fame_bundle` fits what the graph carries besides the weights, then writes it:

- the out-of-distribution head (`trainer.ood`): class means and shared covariance of the
  classifier's features fitted on the *train* arrays, its threshold set so that
  `OOD_FLAGGED_SHARE` of the *validation* arrays are flagged;
- the calibration temperature (`trainer.calibration`) fitted on the *validation* logits,
  divided into the logits inside the graph; ECE before / after recorded;
- where the segmenter is a `FoldEnsemble`: the 4th output ``seg_uncertainty`` (the folds'
  disagreement) and ``postprocessing.uncertainty_threshold``, set so that
  `UNCERTAINTY_FLAGGED_SHARE` of the *validation* images are flagged ``high_uncertainty``
  (a single-MAU-Net bundle keeps its 3 outputs and no such key);
- ``model.onnx`` (parity-checked against the eager model on real validation images,
  `exporters.onnx_export`), ``weights.safetensors`` (`trainer.weights`),
  ``heads.safetensors`` (the OOD head and the exact temperature, bound to the weights by
  their sha256: `trainer.graph`) and the manifest, whose ``training`` gets the
  architecture (``model``), ``calibration`` and ``ood`` entries on top of the caller's
  provenance.

The bundle is read back with `appliance.bundle.load_bundle` before it is returned
(`exporters.bundle.write_bundle`), and the torch graph is rebuilt from its two safetensors
files (`trainer.graph.load_bundle_graph`, what the torch backend runs) and checked to give
the exported module's outputs, so nothing the node would refuse leaves this function.
Too few cases to fit the head or the temperature is an `ExportDataError` that says how
many were given and how many are needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from appliance.bundle import TensorSpec, load_bundle, sha256_bytes
from appliance.errors import BundleError
from exporters.bundle import write_bundle
from exporters.onnx_export import export_onnx
from trainer.calibration import expected_calibration_error, fit_temperature
from trainer.data import ArraySet
from trainer.graph import HEADS_FILE, load_bundle_graph, save_heads
from trainer.models import CLASSES, FameNodeNet
from trainer.ood import (
    LAYER_NAMES,
    OOD_LAYERS,
    OOD_OUTPUT,
    UNCERTAINTY_OUTPUT,
    FameNodeNetWithOOD,
    LayeredOODStats,
    classifier_logits,
    ood_features,
    probe_features,
    segmentation_uncertainty,
    threshold_at,
)
from trainer.weights import WEIGHTS_FILE, architecture_of, save_weights

OOD_FLAGGED_SHARE = 0.05  # of in-distribution (validation) images flagged out_of_distribution
UNCERTAINTY_FLAGGED_SHARE = 0.10  # of validation images a fold ensemble flags high_uncertainty
TASK = "segmentation+classification"


class ExportDataError(BundleError):
    """The arrays given cannot fit the OOD head or the temperature (too few, wrong shape)."""


@dataclass(frozen=True)
class BundleIdentity:
    """What the exported bundle is called and how the node runs it."""

    name: str
    version: str
    preprocessing: Mapping[str, Any]  # `PreprocessParams.to_dict()` of the arrays given
    mask_threshold: float
    min_lesion_area_px: float


def export_fame_bundle(
    net: FameNodeNet,
    out: Path,
    *,
    identity: BundleIdentity,
    train: ArraySet,
    val: ArraySet,
    work_dir: Path,
    training: Mapping[str, Any],
    evaluation: Mapping[str, Any],
    val_name: str = "val",
    extra_files: Mapping[str, Path] | None = None,
    ood_layers: tuple[str, ...] = OOD_LAYERS,
) -> Path:
    """Write `net` as the bundle `out` and verify it; returns `out`.

    `train` fits the OOD statistics; `val` sets the OOD threshold, fits the temperature
    and feeds the ONNX parity check (`val_name` says in the manifest what it was).
    `training` is the caller's provenance (data, optimiser, federation ...), `evaluation`
    its measured figures; `work_dir` holds the intermediate ONNX and weights files.
    `ood_layers` are the layers the OOD head scores (`trainer.ood.OOD_LAYERS` since 0.2.8;
    `trainer.ood.LAYER_NAMES` rebuilds the head of 0.2.1 to 0.2.7).

    Raises
    ------
    ExportDataError
        the arrays are too few or not of the network's input size.
    BundleError
        the written bundle does not verify.
    """
    size = int(identity.preprocessing.get("size", 0))
    for split, arrays in (("train", train), (val_name, val)):
        if arrays.images.ndim != 3 or arrays.images.shape[1:] != (size, size):
            raise ExportDataError(
                f"{split} images have shape {tuple(arrays.images.shape)}, expected "
                f"(N, {size}, {size}) (the preprocessing's size): preprocess them with the "
                "bundle's parameters"
            )
    if len(val) < 2:
        raise ExportDataError(
            f"{len(val)} {val_name} case(s): the temperature and the OOD threshold need at "
            "least 2; review more cases before exporting"
        )
    net.eval()
    work_dir.mkdir(parents=True, exist_ok=True)
    layers = ood_features(net, train.images)
    # One pass over val: the OOD layers, then the lesion means where the probe reads them.
    val_inputs = probe_features(net, val.images, lesion_means=net.reads_lesion_means)
    val_layers = val_inputs[: len(LAYER_NAMES)]
    try:
        stats = LayeredOODStats.fit(layers, train.labels, val_layers, ood_layers)
    except ValueError as exc:
        raise ExportDataError(
            f"the OOD statistics cannot be fitted on {len(train)} training case(s) of "
            f"{[f.shape[1] for f in layers]} features per layer ({exc}): at least one case "
            "per class plus two are needed, whose features are not all alike (a model whose "
            "features are constant cannot be exported)"
        ) from None
    ood_threshold = threshold_at(stats.score(val_layers), OOD_FLAGGED_SHARE)
    val_logits = classifier_logits(net, val_inputs)
    temperature = fit_temperature(val_logits, val.labels)
    calibration = {
        "temperature": round(temperature, 4),
        "fitted_on": val_name,
        f"{val_name}_ece_before": _ece(val_logits, val.labels, 1.0),
        f"{val_name}_ece_after": _ece(val_logits, val.labels, temperature),
    }
    onnx_path = work_dir / "model.onnx"
    wrapper = FameNodeNetWithOOD(net, stats, temperature)
    export_onnx(
        wrapper,
        onnx_path,
        size,
        output_names=wrapper.output_names,
        real_inputs=torch.from_numpy(np.ascontiguousarray(val.images[:8, None])),
    )
    weights_path = save_weights(net, work_dir / WEIGHTS_FILE)
    heads_path = save_heads(
        stats,
        temperature,
        work_dir / HEADS_FILE,
        weights_sha256=sha256_bytes(weights_path.read_bytes()),
    )
    n = "batch"
    # A fold ensemble's disagreement: its output, threshold and provenance; nothing otherwise.
    uncertainty_specs: list[TensorSpec] = []
    uncertainty_post: dict[str, float] = {}
    uncertainty_training: dict[str, str] = {}
    if wrapper.has_uncertainty:
        scores = segmentation_uncertainty(net, val.images)
        threshold = threshold_at(scores, UNCERTAINTY_FLAGGED_SHARE)
        uncertainty_specs = [TensorSpec(name=UNCERTAINTY_OUTPUT, shape=[n])]
        uncertainty_post = {"uncertainty_threshold": round(threshold, 6)}
        uncertainty_training = {
            "uncertainty": (
                "disagreement of the fold models' lesion maps: per-pixel std of the fold "
                "probabilities x 2, mean weighted by the highest fold probability "
                "(trainer.models.fold_ensemble); threshold flags "
                f"{UNCERTAINTY_FLAGGED_SHARE:.0%} of the {val_name} split "
                f"({len(val)} images, median {float(np.median(scores)):.4f})"
            )
        }
    written = write_bundle(
        out,
        onnx_path,
        name=identity.name,
        version=identity.version,
        task=TASK,
        classes=list(CLASSES),
        inputs=[TensorSpec(name="image", shape=[n, 1, size, size])],
        outputs=[
            TensorSpec(name="lesion_prob", shape=[n, 1, size, size]),
            TensorSpec(name="class_prob", shape=[n, len(CLASSES)]),
            TensorSpec(name=OOD_OUTPUT, shape=[n]),
            *uncertainty_specs,
        ],
        preprocessing=dict(identity.preprocessing),
        postprocessing={
            "mask_threshold": identity.mask_threshold,
            "min_lesion_area_px": identity.min_lesion_area_px,
            # Flags about OOD_FLAGGED_SHARE of the validation images: see trainer.ood.
            "ood_threshold": round(ood_threshold, 6),
            **uncertainty_post,
        },
        training={
            **training,
            # What trainer.weights rebuilds the torch model from (weights.safetensors).
            "model": architecture_of(net),
            "calibration": calibration,
            "ood": (
                "Mahalanobis distance to the nearest class mean of each of the layers "
                f"{', '.join(stats.names)} (MAU-Net levels: activation mean and std per "
                f"channel{'; classifier: pooled features' if 'classifier' in stats.names else ''}"
                "), shared covariance per layer fitted on the "
                f"train split ({len(train)} images), each divided by its median on the "
                f"{val_name} split and averaged (trainer.ood.LayeredOODStats); threshold "
                f"flags {OOD_FLAGGED_SHARE:.0%} of the {val_name} split"
            ),
            **uncertainty_training,
        },
        evaluation=dict(evaluation),
        extra_files={**(extra_files or {}), WEIGHTS_FILE: weights_path, HEADS_FILE: heads_path},
    )
    _check_torch_graph(written, wrapper, val.images[:2])
    return written


def _check_torch_graph(
    bundle_dir: Path, exported: FameNodeNetWithOOD, images: NDArray[np.float32]
) -> None:
    """The graph the torch backend rebuilds from the written bundle's safetensors files
    gives the exported module's outputs (both eager FP32 torch: equal up to rounding)."""
    rebuilt = load_bundle_graph(load_bundle(bundle_dir))
    x = torch.from_numpy(np.ascontiguousarray(images[:, None]))
    with torch.no_grad():
        want, got = exported.eval()(x), rebuilt(x)
    for name, a, b in zip(exported.output_names, want, got, strict=True):
        diff = float((a - b).abs().max())
        if not diff <= 1e-5:
            raise BundleError(
                f"bundle {bundle_dir}: the torch graph rebuilt from {WEIGHTS_FILE} and "
                f"{HEADS_FILE} differs from the exported model in {name} by {diff:.3g}; this "
                "is a bug in the export (trainer.graph), please report it"
            )


def _ece(logits: NDArray[Any], labels: NDArray[np.int64], temperature: float) -> float:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return round(expected_calibration_error(e / e.sum(axis=1, keepdims=True), labels), 4)


__all__ = [
    "OOD_FLAGGED_SHARE",
    "UNCERTAINTY_FLAGGED_SHARE",
    "BundleIdentity",
    "ExportDataError",
    "export_fame_bundle",
]
