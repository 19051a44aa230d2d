"""A tiny but real model bundle for runtime and exporter tests (32x32, a few channels)."""

from __future__ import annotations

from pathlib import Path

import torch

from exporters.onnx_export import export_onnx
from tests.appliance.models.bundles import write_test_bundle
from trainer.models import FameNodeNet, LesionClassifier, MAUNet

SIZE = 32


def tiny_net(seed: int = 0) -> FameNodeNet:
    torch.manual_seed(seed)
    return FameNodeNet(MAUNet(base_width=4), LesionClassifier(widths=(4, 8))).eval()


def make_tiny_bundle(out: Path, net: FameNodeNet | None = None) -> Path:
    """Export `net` (default `tiny_net()`) and write a verified bundle to `out`."""
    net = net if net is not None else tiny_net()
    src = out.parent / f".{out.name}-src"
    onnx_path = src / "model.onnx"
    export_onnx(net, onnx_path, SIZE)
    return write_test_bundle(out, onnx_path, name="tiny", version="0.0.1", size=SIZE)
