"""Fit a layer probe (`trainer.models.probe`) to a trained bundle and export it as a new one.

``python -m trainer.probe --bundle DIR --manifest CSV [--manifest CSV...] --version V --out
DIR`` rebuilds the bundle's net from its verified weights, computes every layer's features
(the MAU-Net's activation statistics and the classifier's pooled features, `trainer.ood`,
and the MAU-Net's five levels averaged inside the lesion map; ``--no-lesion-means`` leaves
those out) of the train split's images, and fits one linear layer on them by class-weighted
cross-entropy with an L2 penalty (full-batch L-BFGS in float64: deterministic, no learning
rate to tune). The penalty is chosen on the val split by macro AUC, as the mask threshold
and the temperature are; test is not read. The net's weights are unchanged; the new bundle
(`trainer.refit_heads`, which checks that the data are the bundle's own) classifies with
the probe and has its heads fitted again: the temperature on the probe's val logits, the
OOD head as before.

Why: the classifier learns from about a thousand labels, the MAU-Net learnt from every
pixel of their masks, and its encoder's statistics separate benign from malignant better
than the classifier's own features do; and what the network sees inside the lesion adds to
what it sees over the whole image (val macro AUC 0.880 -> 0.891 on 0.2.2's network, 0.868 ->
0.875 on seed 2026's, 0.878 -> 0.896 on seed 2027's; docs/RESULTS.md, the paragraphs on 0.2.5
and 0.2.6, with the test figures: better on Logiq 7, worse on Aplio 300).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from appliance.bundle import Manifest
from appliance.errors import BundleError
from trainer.data import ArraySet
from trainer.loops import classification_metrics, validate
from trainer.losses import inverse_frequency_weights
from trainer.models import CLASSES, FameNodeNet, LayerProbe
from trainer.ood import LAYER_NAMES, probe_features
from trainer.refit_heads import Adaptation, refit_args, refit_parser

WEIGHT_DECAYS = (1e-3, 1e-2, 1e-1)  # the L2 penalties tried, chosen on val
MAX_ITERATIONS = 500
# The least spread a feature is standardised by. Some channels are (nearly) dead on train:
# their statistics vary by 1e-6, at float32's rounding of the activations, and dividing by
# that spread turned rounding into signal. ONNX Runtime and torch then disagreed by 3e-4 on
# a class probability (the export's parity check refused the graph), and a float16 engine
# would disagree by far more. A feature that spreads less than this on train weighs in at
# its true, small size instead. 1e-2 measured on val no worse than 1e-6 (macro AUC 0.880
# against 0.877 on 0.2.2's network, 0.868 against 0.853 on seed 2026's; docs/RESULTS.md).
SCALE_FLOOR = 1e-2
# The lesion means' layers (`trainer.models.probe.LesionMeans`), after the OOD layers.
LESION_LAYER_NAMES = tuple(f"{name}@lesion" for name in LAYER_NAMES[:-1])


def fit_probe(
    layers: Sequence[NDArray[np.float64]],
    labels: NDArray[np.int64],
    weight_decay: float,
    num_classes: int = len(CLASSES),
    scale_floor: float = SCALE_FLOOR,
    *,
    lesion_means: bool = False,
) -> LayerProbe:
    """A `LayerProbe` fitted on each layer's features (N, D_l) and their labels (N,).

    Minimises the class-weighted cross-entropy (weights N / (K n_k), as the classifier's
    training uses) plus ``weight_decay * ||W||^2`` over the standardised features: each
    feature less its train mean, divided by its train standard deviation or `scale_floor`,
    whichever is larger."""
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if scale_floor <= 0:
        raise ValueError(
            f"scale_floor must be > 0 (a constant feature has spread 0), got {scale_floor}"
        )
    x = np.concatenate([np.asarray(f, np.float64) for f in layers], axis=1)
    y = np.asarray(labels, np.int64)
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"need one label per row and at least 2 rows, got {x.shape}, {y.shape}")
    # Raises ValueError for a class without training cases.
    class_weight = inverse_frequency_weights(
        np.bincount(y, minlength=num_classes).tolist(), dtype=torch.float64
    )
    offset = x.mean(axis=0)
    scale = np.maximum(x.std(axis=0), scale_floor)
    xs = torch.from_numpy((x - offset) / scale)
    target = torch.from_numpy(y)
    linear = torch.nn.Linear(x.shape[1], num_classes, dtype=torch.float64)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    optimiser = torch.optim.LBFGS(
        linear.parameters(), max_iter=MAX_ITERATIONS, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = F.cross_entropy(linear(xs), target, weight=class_weight)
        loss = loss + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    probe = LayerProbe(
        tuple(int(f.shape[1]) for f in layers), num_classes=num_classes, lesion_means=lesion_means
    )
    with torch.no_grad():
        probe.offset.copy_(torch.from_numpy(offset))
        probe.scale.copy_(torch.from_numpy(scale))
        probe.linear.weight.copy_(linear.weight)
        probe.linear.bias.copy_(linear.bias)
    return probe.eval()


def probe_logits(probe: LayerProbe, layers: Sequence[NDArray[np.float64]]) -> NDArray[np.float64]:
    with torch.no_grad():
        return probe([torch.from_numpy(f).float() for f in layers]).double().numpy()


def choose_probe(
    train: tuple[Sequence[NDArray[np.float64]], NDArray[np.int64]],
    val: tuple[Sequence[NDArray[np.float64]], NDArray[np.int64]],
    weight_decays: Sequence[float] = WEIGHT_DECAYS,
    *,
    lesion_means: bool = False,
) -> tuple[LayerProbe, float, dict[str, dict[str, float]]]:
    """The probe of the penalty with the best val macro AUC (ties: the larger penalty),
    the penalty, and every penalty's val figures. `lesion_means`: the layers end with the
    five lesion means (`trainer.ood.probe_features`)."""
    if not weight_decays:
        raise ValueError("no weight decay to try")
    sweep: dict[str, dict[str, float]] = {}
    fits: list[tuple[float, float, LayerProbe]] = []
    for wd in sorted(weight_decays, reverse=True):
        probe = fit_probe(train[0], train[1], wd, lesion_means=lesion_means)
        probs = torch.softmax(torch.from_numpy(probe_logits(probe, val[0])), dim=1).numpy()
        figures = classification_metrics(probs.astype(np.float32), val[1])
        auc = float(figures["macro_auc"])
        sweep[str(wd)] = {
            "macro_auc": round(auc, 4),
            "macro_f1": round(float(figures["macro_f1"]), 4),
            "accuracy": round(float(figures["accuracy"]), 4),
        }
        fits.append((auc if np.isfinite(auc) else -np.inf, wd, probe))
    # max keeps the first of equals: the larger penalty, as the fits are in that order.
    _, wd, probe = max(fits, key=lambda fit: fit[0])
    return probe, wd, sweep


def add_probe(
    net: FameNodeNet,
    data: Mapping[str, ArraySet],
    min_area_px: float,
    weight_decays: Sequence[float] = WEIGHT_DECAYS,
    *,
    lesion_means: bool = True,
) -> Adaptation:
    """Fit the probe on ``data["train"]``, choose its penalty on ``data["val"]``, and set it
    as `net`'s (in place); what the bundle records of it. `lesion_means`: the probe also
    reads the MAU-Net's levels averaged inside the lesion map (False: the six OOD layers
    alone, as bundles 0.2.4 and 0.2.5 were fitted)."""
    train, val = data["train"], data["val"]
    net.probe = None  # the features are the segmenter's and the classifier's, never a probe's
    before = validate(net, val, min_area_px)
    probe, wd, sweep = choose_probe(
        (probe_features(net, train.images, lesion_means=lesion_means), train.labels),
        (probe_features(net, val.images, lesion_means=lesion_means), val.labels),
        weight_decays,
        lesion_means=lesion_means,
    )
    net.probe = probe
    after = validate(net, val, min_area_px)
    from trainer.train import evaluation_record

    record: dict[str, Any] = {
        "probe": {
            "layers": [*LAYER_NAMES, *(LESION_LAYER_NAMES if lesion_means else ())],
            "features": sum(probe.widths),
            "fit": (
                "class-weighted cross-entropy + L2 on the standardised features of the train "
                f"split ({len(train)} images, no augmentation), full-batch L-BFGS; penalty "
                f"{wd} chosen on val by macro AUC from {list(weight_decays)}"
            ),
            "val_sweep": sweep,
            "val_without_probe": {
                k: round(float(before[k]), 4) for k in ("accuracy", "macro_f1", "macro_auc")
            },
        }
    }
    layers = len(LAYER_NAMES) + (len(LESION_LAYER_NAMES) if lesion_means else 0)
    return Adaptation(
        what=(
            f"class logits from a layer probe over {layers} layers' features "
            "fitted by trainer.probe (train split; penalty chosen on val); network weights "
            "unchanged"
        ),
        training=record,
        evaluation={"val": evaluation_record(after)},
    )


def main(argv: list[str] | None = None) -> int:
    parser = refit_parser("python -m trainer.probe", __doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--no-lesion-means",
        dest="lesion_means",
        action="store_false",
        help="fit on the six OOD layers alone, without the MAU-Net's levels averaged inside "
        "the lesion map (how bundles 0.2.4 and 0.2.5 were fitted)",
    )
    a = parser.parse_args(argv)
    torch.set_num_threads(a.threads)

    def adapt(net: FameNodeNet, data: Mapping[str, ArraySet], manifest: Manifest) -> Adaptation:
        min_area = float(manifest.postprocessing["min_lesion_area_px"])
        change = add_probe(net, data, min_area, lesion_means=a.lesion_means)
        print(f"probe: {json.dumps(change.training['probe'])}", flush=True)
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
