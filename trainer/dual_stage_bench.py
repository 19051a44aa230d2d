"""Images/s of the node's whole graph with the dual-stage classifier, through ONNX Runtime.

Builds `FameNodeNet` (MAU-Net at `--base-width`, `DualStageClassifier` at a profile),
exports it with the parity check (`exporters.onnx_export`), and times ONNX Runtime on the
CPU at batch 1 (the node's case) after a warm-up; with ``--eager`` torch eager as well.
Untrained weights: the speed does not depend on them. This is how the profile widths in
`trainer.profiles` were tuned:

    python -m trainer.dual_stage_bench --profile edge --threads 2 --size 128

Measured on the development machine at a load average of 9-13 on its 2 cores (other
training runs), so only the ratios mean anything: 128 x 128, MAU-Net base width 16, batch
1, 2 threads, 8 s windows, one after the other: today's graph (pre-activation ResNet
32-64-128-256) 2.25 and 2.97 images/s, ``edge`` 3.12, ``paper`` 0.55. ``edge`` is as
fast as today's single model (about 50 images/s on an idle node, issue 10); ``paper`` is
about 5x slower. Rerun the command on an idle node for absolute figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from exporters.onnx_export import export_onnx
from trainer.models import FameNodeNet, MAUNet
from trainer.models.dual_stage import BACKBONES, DualStageClassifier
from trainer.profiles import profile


def images_per_second(
    profile_name: str,
    *,
    size: int = 128,
    base_width: int = 16,
    threads: int = 2,
    seconds: float = 10.0,
    backbones: tuple[str, ...] = BACKBONES,
    eager: bool = False,
) -> dict[str, Any]:
    """Time batch-1 inference of the whole graph; the figures as a plain dict."""
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    net = FameNodeNet(
        MAUNet(base_width=base_width),
        DualStageClassifier(profile(profile_name), backbones=backbones),
    ).eval()
    x = np.random.default_rng(0).random((1, 1, size, size), dtype=np.float32)
    result: dict[str, Any] = {
        "profile": profile_name,
        "backbones": list(backbones),
        "size": size,
        "base_width": base_width,
        "threads": threads,
        "parameters": sum(p.numel() for p in net.parameters()),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        report = export_onnx(net, path, size)
        result["onnx_mb"] = round(report.bytes / 1e6, 2)
        result["parity_max_abs_diff"] = max(report.max_abs_diff.values())
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        result["onnxruntime_images_per_s"] = _rate(lambda: session.run(None, {"image": x}), seconds)
    if eager:
        tensor = torch.from_numpy(x)
        with torch.no_grad():
            result["eager_images_per_s"] = _rate(lambda: net(tensor), seconds)
    return result


def _rate(step: Any, seconds: float) -> float:
    for _ in range(3):  # warm-up: allocations, kernel selection
        step()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        count += 1
    return round(count / (time.perf_counter() - start), 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.dual_stage_bench")
    parser.add_argument("--profile", default="edge", help="edge or paper")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--base-width", type=int, default=16, help="MAU-Net base width")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0, help="timing window")
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    parser.add_argument("--eager", action="store_true", help="time torch eager as well")
    a = parser.parse_args(argv)
    print(
        json.dumps(
            images_per_second(
                a.profile,
                size=a.size,
                base_width=a.base_width,
                threads=a.threads,
                seconds=a.seconds,
                backbones=tuple(a.backbones),
                eager=a.eager,
            )
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
