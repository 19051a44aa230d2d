"""Model bundles for tests: placeholder ones (checksums and signatures only) and real,
tiny ones exported from `trainer.models` (needs torch) that ONNX Runtime really runs."""

from __future__ import annotations

import shutil
from pathlib import Path

from appliance.bundle import TensorSpec
from appliance.models.signing import SIGNATURE_NAME, load_private_key, sign_manifest
from exporters.bundle import write_bundle

CLASSES = ["normal", "benign", "malignant"]
SIZE = 64


def write_test_bundle(
    out: Path, onnx_path: Path, *, name: str, version: str, size: int = SIZE
) -> Path:
    """A bundle around `onnx_path` with the node's tensor names, preprocessed at `size`."""
    return write_bundle(
        out,
        onnx_path,
        name=name,
        version=version,
        task="segmentation+classification",
        classes=CLASSES,
        inputs=[TensorSpec(name="image", shape=["batch", 1, size, size])],
        outputs=[
            TensorSpec(name="lesion_prob", shape=["batch", 1, size, size]),
            TensorSpec(name="class_prob", shape=["batch", 3]),
        ],
        preprocessing={"size": size},
        postprocessing={"mask_threshold": 0.5},
        evaluation={"dice": 0.5},
    )


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def placeholder_onnx(text: str) -> bytes:
    """A well-formed ONNX ModelProto with no graph (ir_version 8 and a doc_string): it
    passes the bundle's ONNX checks but no runtime can run it."""
    doc = text.encode() * 100
    return b"\x08\x08" + b"\x32" + _varint(len(doc)) + doc


def placeholder_bundle(out: Path, *, name: str = "tiny", version: str = "1.0.0") -> Path:
    """A bundle whose model.onnx is an empty ONNX model: enough for checksums and
    signatures."""
    src = out.parent / f".{out.name}-model.onnx"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(placeholder_onnx(f"not a model: {name}@{version}"))
    return write_test_bundle(out, src, name=name, version=version)


def real_bundle(out: Path, *, seed: int, name: str = "tiny", version: str = "1.0.0") -> Path:
    """A bundle with a real, tiny, untrained FameNodeNet (MAU-Net width 4) exported to ONNX."""
    import torch

    from exporters.onnx_export import export_onnx
    from trainer.models import FameNodeNet, LesionClassifier, MAUNet

    torch.manual_seed(seed)
    net = FameNodeNet(MAUNet(base_width=4), LesionClassifier(widths=(4, 8)))
    onnx_path = out.parent / f".{out.name}-src" / "model.onnx"
    export_onnx(net, onnx_path, SIZE)
    return write_test_bundle(out, onnx_path, name=name, version=version)


def sign_bundle(bundle: Path, private_key: Path) -> Path:
    sig = bundle / SIGNATURE_NAME
    sig.write_bytes(
        sign_manifest((bundle / "manifest.json").read_bytes(), load_private_key(private_key))
    )
    return sig


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
