"""A bundle's torch weights: ``weights.safetensors`` and the architecture they fit.

The federation fine-tunes the model a node runs, so a bundle carries its torch weights
beside the ONNX graph. They are stored as safetensors (tensors and a JSON header only:
reading them runs no code, unlike a pickle) and listed with their sha256 in the manifest
like every other bundle file (the name is the node's convention,
`appliance.runtime.variants`). The architecture they belong to is recorded twice: in the
manifest (``training.model``) and in the file's own metadata; a model is built only when
both agree, and only from the verified bytes of a verified bundle (`appliance.bundle`).

``FAMILY`` names the one model family this module can build: `FameNodeNet` (MAU-Net, then
the classifier over ``[image, lesion_prob]``), GroupNorm throughout so DP-SGD applies.
The classifier is either the pre-activation ResNet (kind ``preact-resnet``, the shipped
default) or the dual-stage ensemble (kind ``dual-stage``: profile name, backbones and every
width, `trainer.models.dual_stage`); the record of a ``preact-resnet`` bundle is unchanged.
The segmenter is one MAU-Net or a fold ensemble of them (kind ``mau-net-folds``). A net
with a layer probe (`trainer.models.probe`, its class logits over every layer's features)
records it as ``probe`` (kind ``layer-probe`` and the widths of its layers); a net without
one has no such key, so the record of earlier bundles is unchanged.

The graph around the network (OOD head, temperature) is rebuilt by `trainer.graph`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from appliance.bundle import Bundle, BundleError
from appliance.runtime.variants import WEIGHTS_FILE
from trainer.models import (
    PROBE_KIND,
    DualStageClassifier,
    FameNodeNet,
    FoldEnsemble,
    LayerProbe,
    LesionClassifier,
    MAUNet,
)
from trainer.profiles import DualStageProfile

FAMILY = "fame-node-net"
ARCHITECTURE_VERSION = 1
DUAL_STAGE = "dual-stage"  # classifier kind of `DualStageClassifier`
_METADATA_KEY = "architecture"


class WeightsError(BundleError):
    """The weights cannot be used: missing, unverified, corrupt, or for another model."""


def architecture(
    base_width: int,
    cls_widths: tuple[int, ...],
    dropout: float,
    *,
    channel_attention: bool = True,
    spatial_attention: bool = True,
    folds: int = 1,
    classifier: Mapping[str, Any] | None = None,
    probe: LayerProbe | None = None,
) -> dict[str, Any]:
    """The description `build_net` rebuilds a `FameNodeNet` from.

    `folds` > 1: the segmenter is a `FoldEnsemble` of that many MAU-Nets of this
    architecture (kind ``mau-net-folds``); 1 keeps the single MAU-Net's record as it was.
    `classifier`: another classifier's record (`dual_stage_record`), in place of the
    pre-activation ResNet of `cls_widths` and `dropout`. `probe`: the net's layer probe."""
    segmenter: dict[str, Any] = {"kind": "mau-net", "in_channels": 1, "base_width": base_width}
    if folds > 1:
        segmenter.update(kind="mau-net-folds", folds=folds)
    # Recorded only for an ablation variant, so the architectures of earlier bundles (with
    # both attentions, and no such keys) stay what they were.
    if not channel_attention:
        segmenter["channel_attention"] = False
    if not spatial_attention:
        segmenter["spatial_attention"] = False
    record: dict[str, Any] = {
        "family": FAMILY,
        "version": ARCHITECTURE_VERSION,
        "segmenter": segmenter,
        "classifier": dict(classifier)
        if classifier is not None
        else {
            "kind": "preact-resnet",
            "in_channels": 2,
            "widths": list(cls_widths),
            "dropout": dropout,
        },
        "norm": "group",
    }
    if probe is not None:
        record["probe"] = {
            "kind": PROBE_KIND,
            "widths": list(probe.widths),
            "num_classes": probe.num_classes,
        }
        if probe.lesion_means:  # recorded only where set: older bundles' records unchanged
            record["probe"]["lesion_means"] = True
    return record


def dual_stage_record(cls: DualStageClassifier) -> dict[str, Any]:
    """The architecture record of a dual-stage classifier: its profile's name (what it was
    built as) and every width (what it is: a retuned profile does not change old bundles)."""
    widths = cls.profile.to_dict()
    name = widths.pop("name")
    return {
        "kind": DUAL_STAGE,
        "in_channels": cls.in_channels,
        "num_classes": cls.num_classes,
        "profile": name,
        "backbones": list(cls.backbone_names),
        "widths": widths,
    }


def architecture_of(net: FameNodeNet) -> dict[str, Any]:
    cls, seg = net.classifier, net.segmenter
    common: dict[str, Any] = {
        "channel_attention": seg.channel_attention,
        "spatial_attention": seg.spatial_attention,
        "folds": seg.k if isinstance(seg, FoldEnsemble) else 1,
        "probe": net.probe,
    }
    if isinstance(cls, DualStageClassifier):
        return architecture(
            seg.base_width, (), cls.profile.dropout, classifier=dual_stage_record(cls), **common
        )
    return architecture(seg.base_width, cls.widths, float(cls.dropout.p), **common)


def build_classifier(cls: Mapping[str, Any]) -> LesionClassifier | DualStageClassifier:
    """The classifier of record `cls` (kind ``preact-resnet`` when unnamed, or
    ``dual-stage``); KeyError / TypeError / ValueError for an incomplete or unknown one."""
    kind = cls.get("kind", "preact-resnet")
    if kind == DUAL_STAGE:
        widths = cls["widths"]
        if not isinstance(widths, Mapping):
            raise TypeError(f"dual-stage widths must be an object, got {widths!r}")
        return DualStageClassifier(
            DualStageProfile.from_dict({**widths, "name": str(cls["profile"])}),
            backbones=tuple(str(b) for b in cls["backbones"]),
            in_channels=int(cls["in_channels"]),
            num_classes=int(cls["num_classes"]),
        )
    if kind != "preact-resnet":
        raise ValueError(f"unknown classifier kind {kind!r} (known: preact-resnet, {DUAL_STAGE})")
    return LesionClassifier(
        in_channels=int(cls["in_channels"]),
        widths=tuple(int(w) for w in cls["widths"]),
        dropout=float(cls["dropout"]),
    )


def build_net(arch: Mapping[str, Any]) -> FameNodeNet:
    """A fresh `FameNodeNet` of architecture `arch`; WeightsError for another family."""
    if arch.get("family") != FAMILY or arch.get("version") != ARCHITECTURE_VERSION:
        raise WeightsError(
            f"model family {arch.get('family')!r} version {arch.get('version')!r}: this node "
            f"builds {FAMILY!r} version {ARCHITECTURE_VERSION}; install a node version that "
            "knows this model, or a bundle of this family"
        )
    try:
        seg, cls = arch["segmenter"], arch["classifier"]
        kind = seg.get("kind", "mau-net")
        if kind not in ("mau-net", "mau-net-folds"):
            raise ValueError(f"unknown segmenter kind {kind!r}")

        def mau_net() -> MAUNet:
            return MAUNet(
                in_channels=int(seg["in_channels"]),
                base_width=int(seg["base_width"]),
                channel_attention=bool(seg.get("channel_attention", True)),
                spatial_attention=bool(seg.get("spatial_attention", True)),
            )

        segmenter: MAUNet | FoldEnsemble = (
            FoldEnsemble([mau_net() for _ in range(int(seg["folds"]))])
            if kind == "mau-net-folds"
            else mau_net()
        )
        classifier = build_classifier(cls)
        probe = build_probe(arch["probe"]) if "probe" in arch else None
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"architecture {dict(arch)!r} is incomplete or invalid: {exc}") from exc
    return FameNodeNet(segmenter, classifier, probe)


def build_probe(record: Mapping[str, Any]) -> LayerProbe:
    """The layer probe of `record`; ValueError / KeyError / TypeError for another one."""
    if record.get("kind") != PROBE_KIND:
        raise ValueError(f"unknown probe kind {record.get('kind')!r} (known: {PROBE_KIND})")
    lesion_means = record.get("lesion_means", False)
    if not isinstance(lesion_means, bool):
        raise ValueError(f"the probe's lesion_means must be true or false, got {lesion_means!r}")
    return LayerProbe(
        tuple(int(w) for w in record["widths"]),
        num_classes=int(record["num_classes"]),
        lesion_means=lesion_means,
    )


def weights_bytes(net: FameNodeNet) -> bytes:
    """The safetensors bytes of `net`'s state, its architecture in the metadata."""
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    meta = {_METADATA_KEY: json.dumps(architecture_of(net), sort_keys=True)}
    return save_tensors(state, metadata=meta)


def save_weights(net: FameNodeNet, path: Path) -> Path:
    path.write_bytes(weights_bytes(net))
    return path


def net_from_bytes(data: bytes, arch: Mapping[str, Any] | None = None) -> FameNodeNet:
    """Build the model the safetensors `data` describe and load them, in eval mode.

    `arch`, when given (the manifest's record), must equal the file's own metadata.
    Raises WeightsError for a corrupt file, a disagreement, or tensors that do not fit.
    """
    own = _metadata_architecture(data)
    if arch is not None and json.dumps(dict(arch), sort_keys=True) != json.dumps(
        own, sort_keys=True
    ):
        raise WeightsError(
            "the weights' own architecture differs from the one the manifest records; "
            "the bundle is inconsistent: rebuild it with the trainer"
        )
    net = build_net(own)
    try:
        state = load_tensors(data)
        net.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError) as exc:
        raise WeightsError(f"the weights do not fit architecture {own}: {exc}") from exc
    return net.eval()


def load_bundle_net(bundle: Bundle) -> FameNodeNet:
    """The torch model of a verified bundle, from its verified weights bytes."""
    if not bundle.has(WEIGHTS_FILE):
        raise WeightsError(
            f"bundle {bundle.version_label} carries no {WEIGHTS_FILE} (it predates torch "
            "weights in bundles): it can be run but not fine-tuned; install a bundle built "
            "by this trainer version"
        )
    arch = bundle.manifest.training.get("model")
    if not isinstance(arch, Mapping):
        raise WeightsError(
            f"bundle {bundle.version_label}: the manifest has no training.model architecture"
        )
    return net_from_bytes(bundle.data(WEIGHTS_FILE), arch)


def _metadata_architecture(data: bytes) -> dict[str, Any]:
    # safetensors: 8-byte little-endian header length, then the JSON header.
    if len(data) < 8:
        raise WeightsError(f"weights file of {len(data)} bytes is not a safetensors file")
    size = int.from_bytes(data[:8], "little")
    if size <= 0 or 8 + size > len(data):
        raise WeightsError("weights file header is corrupt (length out of range)")
    try:
        header = json.loads(data[8 : 8 + size])
        text = header["__metadata__"][_METADATA_KEY]
        arch = json.loads(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise WeightsError(f"weights file has no readable architecture metadata: {exc}") from exc
    if not isinstance(arch, dict):
        raise WeightsError("weights file architecture metadata is not an object")
    return arch


__all__ = [
    "DUAL_STAGE",
    "FAMILY",
    "WEIGHTS_FILE",
    "WeightsError",
    "architecture",
    "architecture_of",
    "build_classifier",
    "build_net",
    "dual_stage_record",
    "load_bundle_net",
    "net_from_bytes",
    "save_weights",
    "weights_bytes",
]
