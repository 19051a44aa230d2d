"""The exported graph as a torch module, rebuilt from a verified bundle's safetensors.

``model.onnx`` is `trainer.ood.FameNodeNetWithOOD`: the network (`FameNodeNet`, any family
`trainer.weights` builds) plus what the export fitted around it, the out-of-distribution
head and the calibration temperature (`exporters.fame_bundle`). The network's tensors are in
``weights.safetensors``; this module owns the rest, ``heads.safetensors``, so that a backend
running torch (`appliance.runtime.torch_backend`) computes every output of ``model.onnx``:
the OOD score (``out_of_distribution``), the fold disagreement (``high_uncertainty``) and the
temperature-scaled class probabilities (``low_confidence``), not the bare network's two.

``heads.safetensors`` (tensors and a JSON header: reading it runs no code, unlike a pickle):

- ``ood.<layer>.means`` (K, D) and ``ood.<layer>.precision`` (D, D), float32, per layer of
  the head: a `LayeredOODStats`' scored layers (``names``: since 0.2.8
  `trainer.ood.OOD_LAYERS`, the four encoder levels; 0.2.1 to 0.2.7 all six of
  `trainer.ood.LAYER_NAMES`), ``classifier`` alone for the single-layer `OODStats` of
  bundles before 0.2.1. float32 because that is what the graph
  holds (`MahalanobisHead`'s buffers); float64 would double the size of the ``paper``
  classifier's (6336 x 6336) precision for no change in any output.
- ``ood.scales`` (L,), float64: a layered head's per-layer scales (none for one layer).
- ``temperature`` (1,), float64: the fitted temperature exactly (the manifest rounds it).
- metadata: ``format`` (`HEADS_FORMAT`), ``ood`` (``layered`` or ``single``), ``layers``
  (JSON list of layer names) and ``weights_sha256``: the sha256 of the bundle's
  ``weights.safetensors`` the heads were fitted on, so another bundle's heads are refused
  even when their shapes happen to fit.

`load_bundle_graph` builds the module only from a verified `Bundle`'s bytes, and only if
the heads fit the weights (the sha256, then each layer's feature width) and the module's
outputs are the manifest's (``model.onnx``'s) outputs, in order. Its errors are
`HeadsError` (a `trainer.weights.WeightsError`, so a `BundleError`), saying what is missing
or wrong and what to do.

Like `trainer.weights`, this module needs torch and safetensors but nothing else of the
``train`` extra.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from appliance.bundle import Bundle
from appliance.runtime.variants import HEADS_FILE, WEIGHTS_FILE
from trainer.models import FameNodeNet
from trainer.ood import (
    LAYER_NAMES,
    FameNodeNetWithOOD,
    LayeredOODStats,
    OODStats,
    ood_features,
    scored_layers_ok,
)
from trainer.weights import WeightsError, load_bundle_net

HEADS_FORMAT = "fame-node-heads/1"
LAYERED = "layered"
SINGLE = "single"
SINGLE_LAYER = "classifier"  # the one layer of an `OODStats` head: the classifier's features
REFIT_HINT = (
    "add the heads to the bundle with `python -m trainer.refit_heads --bundle DIR --manifest "
    "CSV --version NEW --out NEW_DIR` (the data manifests it was trained on), or export it "
    "again with the trainer"
)


class HeadsError(WeightsError):
    """``heads.safetensors`` is missing, corrupt, or does not fit the bundle's weights."""


@dataclass(frozen=True)
class Heads:
    """What ``heads.safetensors`` holds: the OOD statistics, the temperature, and the
    sha256 of the weights file they were fitted on."""

    stats: OODStats | LayeredOODStats
    temperature: float
    weights_sha256: str

    @property
    def layers(self) -> tuple[str, ...]:
        return self.stats.names if isinstance(self.stats, LayeredOODStats) else (SINGLE_LAYER,)


def heads_bytes(
    stats: OODStats | LayeredOODStats, temperature: float, *, weights_sha256: str
) -> bytes:
    """The safetensors bytes of the heads (see the module docstring for the layout)."""
    if not temperature > 0 or not np.isfinite(temperature):
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    layered = isinstance(stats, LayeredOODStats)
    per_layer = stats.layers if isinstance(stats, LayeredOODStats) else (stats,)
    names: tuple[str, ...] = stats.names if isinstance(stats, LayeredOODStats) else (SINGLE_LAYER,)
    if len(per_layer) != len(names):
        raise ValueError(f"{len(per_layer)} OOD layers, the graph computes {len(names)}")
    tensors: dict[str, torch.Tensor] = {
        "temperature": torch.tensor([temperature], dtype=torch.float64)
    }
    for name, layer in zip(names, per_layer, strict=True):
        tensors[f"ood.{name}.means"] = torch.tensor(layer.means, dtype=torch.float32)
        tensors[f"ood.{name}.precision"] = torch.tensor(layer.precision, dtype=torch.float32)
    if isinstance(stats, LayeredOODStats):
        tensors["ood.scales"] = torch.tensor(stats.scales, dtype=torch.float64)
    meta = {
        "format": HEADS_FORMAT,
        "ood": LAYERED if layered else SINGLE,
        "layers": json.dumps(list(names)),
        "weights_sha256": weights_sha256,
    }
    return save_tensors({k: v.contiguous() for k, v in tensors.items()}, metadata=meta)


def save_heads(
    stats: OODStats | LayeredOODStats, temperature: float, path: Path, *, weights_sha256: str
) -> Path:
    path.write_bytes(heads_bytes(stats, temperature, weights_sha256=weights_sha256))
    return path


def heads_from_bytes(data: bytes) -> Heads:
    """The heads of a ``heads.safetensors``; HeadsError for a file that is not one."""
    meta = _metadata(data)
    if meta.get("format") != HEADS_FORMAT:
        raise HeadsError(
            f"{HEADS_FILE} has format {meta.get('format')!r}, this node reads {HEADS_FORMAT!r}: "
            f"install a node version that knows it, or {REFIT_HINT}"
        )
    kind = meta.get("ood")
    try:
        layers = tuple(str(n) for n in json.loads(meta["layers"]))
        sha = str(meta["weights_sha256"])
        tensors = load_tensors(data)
        temperature = float(tensors["temperature"].reshape(-1)[0])
        per_layer = tuple(
            OODStats(
                means=tensors[f"ood.{n}.means"].double().numpy(),
                precision=tensors[f"ood.{n}.precision"].double().numpy(),
            )
            for n in layers
        )
        stats: OODStats | LayeredOODStats
        expected: tuple[str, ...]
        if kind == LAYERED:
            if not scored_layers_ok(layers):
                raise _layers_error(layers, LAYER_NAMES)
            expected = layers  # a selection of the graph's layers, in its order
            scales = tuple(float(s) for s in tensors["ood.scales"].reshape(-1))
            if len(scales) != len(layers):
                raise _scales_error(scales)
            stats = LayeredOODStats(layers=per_layer, scales=scales, names=layers)
        elif kind == SINGLE:
            expected, scales = (SINGLE_LAYER,), (1.0,)
            stats = per_layer[0]
        else:
            raise HeadsError(f"{HEADS_FILE}: unknown OOD head kind {kind!r} ({LAYERED}, {SINGLE})")
    except (KeyError, ValueError, TypeError, IndexError, SafetensorError) as exc:
        raise HeadsError(f"{HEADS_FILE} is incomplete or corrupt ({exc!r}): {REFIT_HINT}") from exc
    if layers != expected:
        raise _layers_error(layers, expected)
    if len(scales) != len(layers) or not all(np.isfinite(s) and s > 0 for s in scales):
        raise _scales_error(scales)
    if not (np.isfinite(temperature) and temperature > 0):
        raise HeadsError(f"{HEADS_FILE}: the temperature {temperature} is not a positive number")
    for name, layer in zip(layers, per_layer, strict=True):
        k_d, d_d = layer.means.shape, layer.precision.shape
        if len(k_d) != 2 or d_d != (k_d[1], k_d[1]):
            raise HeadsError(
                f"{HEADS_FILE}: layer {name} has means {tuple(k_d)} and precision {tuple(d_d)}; "
                "expected (K, D) and (D, D)"
            )
    return Heads(stats=stats, temperature=temperature, weights_sha256=sha)


def _layers_error(layers: tuple[str, ...], expected: tuple[str, ...]) -> HeadsError:
    return HeadsError(
        f"{HEADS_FILE} holds an OOD head over the layers {list(layers)}; this node's graph "
        f"computes {list(expected)}: {REFIT_HINT}"
    )


def _scales_error(scales: tuple[float, ...]) -> HeadsError:
    return HeadsError(
        f"{HEADS_FILE}: the layer scales {scales} are not one positive value per layer"
    )


def graph_module(net: FameNodeNet, heads: Heads, size: int) -> FameNodeNetWithOOD:
    """`FameNodeNetWithOOD` of `net` and `heads`, after checking each head layer's feature
    width against `net`'s features on one image of side `size` (eval mode).

    Raises HeadsError when a layer's width differs: heads fitted to another network."""
    widths = [int(f.shape[1]) for f in ood_features(net, np.zeros((1, size, size), np.float32))]
    if isinstance(heads.stats, OODStats):
        widths = widths[-1:]  # the single-layer head scores the classifier's features only
        per_layer: tuple[OODStats, ...] = (heads.stats,)
    else:
        widths = [widths[i] for i in heads.stats.indices]
        per_layer = heads.stats.layers
    for name, layer, width in zip(heads.layers, per_layer, widths, strict=True):
        if layer.means.shape[1] != width:
            raise HeadsError(
                f"{HEADS_FILE}: the OOD head's layer {name} scores {layer.means.shape[1]} "
                f"features, this bundle's network gives {width}: the heads were fitted to "
                f"another model; {REFIT_HINT}"
            )
    return FameNodeNetWithOOD(net, heads.stats, heads.temperature).eval()


def load_bundle_graph(bundle: Bundle) -> FameNodeNetWithOOD:
    """The torch module of a verified bundle's ``model.onnx`` (eval mode, on the CPU, FP32),
    from its verified ``weights.safetensors`` and ``heads.safetensors``.

    Raises
    ------
    HeadsError
        no heads file, a corrupt one, heads fitted to other weights, or a module whose
        outputs are not the manifest's.
    WeightsError
        no weights file, or weights that do not fit their architecture (`trainer.weights`).
    BundleError
        the bundle was read without verification.
    """
    if not bundle.has(HEADS_FILE):
        raise HeadsError(
            f"bundle {bundle.version_label} carries no {HEADS_FILE} (the out-of-distribution "
            "head and the calibration temperature of its model.onnx; bundles exported before "
            f"them have only {WEIGHTS_FILE}), so torch cannot compute what model.onnx does: "
            f"{REFIT_HINT}"
        )
    net = load_bundle_net(bundle)
    heads = heads_from_bytes(bundle.data(HEADS_FILE))
    weights_sha = hashlib.sha256(bundle.data(WEIGHTS_FILE)).hexdigest()
    if heads.weights_sha256 != weights_sha:
        raise HeadsError(
            f"bundle {bundle.version_label}: {HEADS_FILE} was fitted to the weights of sha256 "
            f"{heads.weights_sha256[:12]}..., its {WEIGHTS_FILE} has {weights_sha[:12]}...: "
            f"the heads belong to another model; {REFIT_HINT}"
        )
    module = graph_module(net, heads, bundle.manifest.preprocess_params().size)
    want = tuple(o.name for o in bundle.manifest.outputs)
    if module.output_names != want:
        raise HeadsError(
            f"bundle {bundle.version_label}: model.onnx returns {list(want)}, the graph "
            f"rebuilt from {WEIGHTS_FILE} and {HEADS_FILE} returns {list(module.output_names)}; "
            "the bundle is inconsistent: export it again with the trainer"
        )
    return module


def _metadata(data: bytes) -> dict[str, str]:
    # safetensors: 8-byte little-endian header length, then the JSON header.
    if len(data) < 8:
        raise HeadsError(f"{HEADS_FILE} of {len(data)} bytes is not a safetensors file")
    size = int.from_bytes(data[:8], "little")
    if size <= 0 or 8 + size > len(data):
        raise HeadsError(f"{HEADS_FILE}: the safetensors header is corrupt (length out of range)")
    try:
        meta = json.loads(data[8 : 8 + size])["__metadata__"]
    except (ValueError, KeyError, TypeError) as exc:
        raise HeadsError(f"{HEADS_FILE} has no readable metadata ({exc!r}): {REFIT_HINT}") from exc
    if not isinstance(meta, dict):
        raise HeadsError(f"{HEADS_FILE}: the metadata is not an object")
    return {str(k): str(v) for k, v in meta.items()}


__all__ = [
    "HEADS_FILE",
    "HEADS_FORMAT",
    "Heads",
    "HeadsError",
    "graph_module",
    "heads_bytes",
    "heads_from_bytes",
    "load_bundle_graph",
    "save_heads",
]
