"""Adding derived files to an existing bundle: the FP16 ONNX, the torch weights, engines.

What ``fame-node export onnx`` and ``fame-node export engines`` write (the names are in
`appliance.runtime.variants`). The bundle's ``model.onnx`` is never replaced: every added
file is derived from its verified bytes or checked against them. The bundle is verified
first; the new files are then written from bytes in memory and their sha256 taken of
those same bytes (so a file that changes on disk meanwhile can never be recorded), the
manifest is rewritten, and the bundle is read back with `load_bundle` before returning.

A signed bundle is refused (the signature covers the manifest, which changes): add the
variants before signing, or write a copy with `copy_bundle` and sign that.

Only `add_torch_weights` needs torch; the others run on a node without it.
"""

from __future__ import annotations

import dataclasses
import io
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from appliance.bundle import MANIFEST_NAME, Bundle, load_bundle, sha256_bytes
from appliance.errors import BundleError
from appliance.models.signing import SIGNATURE_NAME
from appliance.runtime.variants import FP16_FILE, TORCH_FILE, TORCH_FORMAT, engine_file
from exporters.fp16 import DEFAULT_KEEP_FP32, Fp16Report, export_fp16

if TYPE_CHECKING:
    from torch import nn

    from trainer.models import FameNodeNet


def copy_bundle(src: Path, dst: Path) -> Path:
    """Copy a bundle's verified bytes (without its signature) to `dst`, which must not
    exist."""
    if dst.exists():
        raise BundleError(f"{dst} already exists; choose a new folder for the copy")
    bundle = load_bundle(src)
    dst.mkdir(parents=True)
    for rel, data in [(MANIFEST_NAME, bundle.manifest_bytes), *bundle.contents.items()]:
        _write(dst / rel, data)
    return dst


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def add_files(
    bundle_dir: Path, files: Mapping[str, bytes], *, evaluation: Mapping[str, Any] | None = None
) -> Bundle:
    """Write `files` (bundle-relative name -> content) into the verified bundle, record them
    in the manifest with the sha256 of those bytes, and merge `evaluation` into its
    ``evaluation``.

    Raises
    ------
    BundleError
        the bundle does not verify, is signed, or a name leaves the bundle.
    """
    bundle = load_bundle(bundle_dir)
    if (bundle_dir / SIGNATURE_NAME).exists():
        raise BundleError(
            f"bundle {bundle_dir} is signed: adding files would invalidate its signature. Add "
            "them before signing (or write a copy with --out) and sign again."
        )
    checksums = dict(bundle.manifest.files)
    for rel in files:
        parts = PurePosixPath(rel).parts
        if (
            not parts
            or PurePosixPath(rel).is_absolute()
            or ".." in parts
            or rel in (MANIFEST_NAME, SIGNATURE_NAME)
        ):
            raise BundleError(f"{rel!r} is not a file name inside bundle {bundle_dir}")
    for rel, data in files.items():
        _write(bundle_dir / rel, data)
        checksums[rel] = sha256_bytes(data)
    manifest = bundle.manifest.model_copy(
        update={
            "files": checksums,
            "evaluation": {**bundle.manifest.evaluation, **(evaluation or {})},
        }
    )
    path = bundle_dir / MANIFEST_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return load_bundle(bundle_dir)


def add_fp16(bundle_dir: Path, *, keep_fp32: tuple[str, ...] = DEFAULT_KEEP_FP32) -> Fp16Report:
    """Write ``model.fp16.onnx`` from the bundle's verified model, check it, record it."""
    bundle = load_bundle(bundle_dir)
    _refuse_signed(bundle_dir)
    size = bundle.manifest.preprocess_params().size
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((b, 1, size, size)).astype(np.float32) for b in (1, 4)]
    with tempfile.TemporaryDirectory() as tmp:  # private to this process
        src = Path(tmp) / bundle.manifest.model_file
        src.write_bytes(bundle.model_bytes)
        report = export_fp16(src, Path(tmp) / FP16_FILE, keep_fp32=keep_fp32, inputs=inputs)
        half = report.path.read_bytes()
    report = dataclasses.replace(report, path=bundle_dir / FP16_FILE)
    diffs = {k: float(f"{v:.3g}") for k, v in report.max_abs_diff.items()}
    add_files(
        bundle_dir,
        {FP16_FILE: half},
        evaluation={
            "onnx_fp16": {
                "max_abs_diff_vs_fp32": diffs,
                "kept_fp32": list(report.kept_fp32),
                "note": "ONNX Runtime CPU, random inputs at batch 1 and 4",
            }
        },
    )
    return report


def architecture_from_state(
    segmenter: Mapping[str, Any], classifier: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """MAU-Net and classifier constructor arguments read off their state dicts' shapes.

    So that any ``trainer.train`` checkpoint (which stores only the weights) can be rebuilt
    whatever widths it was trained with.
    """
    try:
        first = segmenter["encoders.0.body.0.weight"]
        mlp = segmenter["bottleneck_attention.channel.mlp.0.weight"]
        hidden, channels = int(mlp.shape[0]), int(mlp.shape[1])
        reduction = next(r for r in range(1, channels + 1) if max(channels // r, 4) == hidden)
        widths = []
        i = 0
        while f"blocks.{i}.conv2.weight" in classifier:
            widths.append(int(classifier[f"blocks.{i}.conv2.weight"].shape[0]))
            i += 1
        return {
            "segmenter": {
                "in_channels": int(first.shape[1]),
                "base_width": int(first.shape[0]),
                "reduction": reduction,
            },
            "classifier": {
                "in_channels": int(classifier["stem.weight"].shape[1]),
                "widths": widths,
                "num_classes": int(classifier["fc.weight"].shape[0]),
            },
        }
    except (KeyError, StopIteration, AttributeError, IndexError) as exc:
        raise BundleError(f"not a MAU-Net + classifier state dict: {exc!r}") from exc


def load_trainer_checkpoint(path: Path) -> FameNodeNet:
    """The eager `FameNodeNet` (eval) of a ``trainer.train`` checkpoint, any widths."""
    import torch

    from trainer.models import FameNodeNet, LesionClassifier, MAUNet

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        arch = architecture_from_state(state["segmenter"], state["classifier"])
        seg = MAUNet(**arch["segmenter"])
        seg.load_state_dict(state["segmenter"])
        cls_args = {**arch["classifier"], "widths": tuple(arch["classifier"]["widths"])}
        cls = LesionClassifier(**cls_args)
        cls.load_state_dict(state["classifier"])
    except (OSError, KeyError, TypeError, RuntimeError) as exc:
        raise BundleError(f"cannot load checkpoint {path}: {exc}") from exc
    return FameNodeNet(seg, cls).eval()


def save_torch_weights(net: FameNodeNet, path: Path) -> Path:
    """Write `net`'s weights and architecture in the torch backend's format."""
    _write(path, torch_weights_bytes(net))
    return path


def torch_weights_bytes(net: FameNodeNet) -> bytes:
    """`net`'s weights and architecture in the torch backend's format (``model.pt``)."""
    import torch

    from trainer.models import LesionClassifier

    seg, cls = net.segmenter, net.classifier
    if not isinstance(cls, LesionClassifier):
        raise BundleError(
            f"the torch backend's model.pt holds a pre-activation ResNet classifier, not a "
            f"{type(cls).__name__}: use the bundle's weights.safetensors (trainer.weights)"
        )
    widths = [_conv(block, "conv2").out_channels for block in cls.blocks]
    payload = {
        "format": TORCH_FORMAT,
        "architecture": {
            "segmenter": {
                "in_channels": seg.in_channels,
                "base_width": seg.base_width,
                "reduction": _reduction(net),
            },
            "classifier": {
                "in_channels": cls.in_channels,
                "widths": widths,
                "num_classes": int(cls.fc.out_features),
                "dropout": float(cls.dropout.p),
            },
        },
        "segmenter": seg.state_dict(),
        "classifier": cls.state_dict(),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def _conv(module: nn.Module, name: str) -> nn.Conv2d:
    from torch import nn

    conv = module.get_submodule(name)
    if not isinstance(conv, nn.Conv2d):
        raise BundleError(f"expected a Conv2d at {name!r}, found {type(conv).__name__}")
    return conv


def _reduction(net: FameNodeNet) -> int:
    # The bottleneck is the widest attention, where channels // reduction is above the floor.
    # Without channel attention (an ablation variant) the reduction is unused: the default.
    from trainer.models import MAUNet

    seg = net.segmenter
    if not isinstance(seg, MAUNet):
        raise BundleError(
            f"the torch backend's {TORCH_FILE} holds one MAU-Net, this model's segmenter is a "
            f"{type(seg).__name__}: run it with ONNX Runtime or TensorRT instead"
        )
    if not seg.channel_attention:
        return 8
    first = _conv(seg.bottleneck_attention.channel, "mlp.0")
    channels, hidden = first.in_channels, first.out_channels
    for r in range(1, channels + 1):
        if max(channels // r, 4) == hidden:
            return r
    raise BundleError(f"cannot infer the attention reduction ({channels} -> {hidden} channels)")


def add_torch_weights(bundle_dir: Path, net: FameNodeNet, *, tolerance: float = 1e-4) -> float:
    """Add ``model.pt`` for `net` after checking it computes the bundle's ``model.onnx``.

    Returns the largest |difference| found; raises `BundleError` above `tolerance` (the
    weights are not this bundle's model).
    """
    import onnxruntime as ort
    import torch

    bundle = load_bundle(bundle_dir)
    _refuse_signed(bundle_dir)
    size = bundle.manifest.preprocess_params().size
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 1, size, size)))
    x = x.float()
    with torch.inference_mode():
        eager = [t.numpy() for t in net.eval()(x)]
    session = ort.InferenceSession(bundle.model_bytes, providers=["CPUExecutionProvider"])
    names = [o.name for o in bundle.manifest.outputs]
    got = session.run(names, {bundle.manifest.inputs[0].name: x.numpy()})
    diff = max(float(np.max(np.abs(e - g))) for e, g in zip(eager, got, strict=True))
    if not diff <= tolerance:
        raise BundleError(
            f"these torch weights do not compute bundle {bundle_dir}'s model.onnx (outputs "
            f"differ by up to {diff:.3g}, tolerance {tolerance:.0e}): use the checkpoint the "
            "bundle was exported from"
        )
    add_files(bundle_dir, {TORCH_FILE: torch_weights_bytes(net)})
    return diff


def add_engine(bundle_dir: Path, name: str, data: bytes) -> Bundle:
    """Add a verified engine (`exporters.engines.VerifiedEngine`'s name and bytes, never a
    file from the cache by path) to ``engines/`` of the bundle and record it."""
    _refuse_signed(bundle_dir)
    if "/" in name or not name.endswith(".plan"):
        raise BundleError(f"{name!r} is not an engine file name (NAME.plan)")
    return add_files(bundle_dir, {engine_file(name): data})


def _refuse_signed(bundle_dir: Path) -> None:
    if (bundle_dir / SIGNATURE_NAME).exists():
        raise BundleError(
            f"bundle {bundle_dir} is signed: adding files would invalidate its signature. "
            "Write a copy with --out, then sign it again (`fame-node models sign`)."
        )
