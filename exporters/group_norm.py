"""GroupNorm exported as its own two-pass arithmetic, not as InstanceNormalization.

The TorchScript exporter writes ``aten::group_norm`` as Reshape, InstanceNormalization,
Reshape, Mul, Add. ONNX Runtime's float32 InstanceNormalization is about six times less
exact than torch's GroupNorm (measured 2026-12-04 on a (2, 16, 128, 128) tensor of mean 2
and SD 0.5: 4.0e-6 against 6.4e-7 from float64), and its error grows through the MAU-Net's
first level, at 128 x 128 pixels. Most outputs do not notice; the out-of-distribution score
does: it is a Mahalanobis distance over per-channel statistics that vary little from one
image to the next, so it magnifies that error (docs/RESULTS.md: an OOD head over the
encoder levels differed from torch by 1.2e-4 relative, over the export's parity limit).

`group_norm_symbolic` writes the same normalisation out: the mean over each group by three
ReduceMeans (width, then height, then the group's channels), the variance of the centred
values the same way, division by the square root of variance + eps, then the affine
weight and bias. Summing row by row then column by column keeps float32 sums short, where
one ReduceMean over 16,384 pixels sums them in one long run. `register` installs it for
every export of this process (`exporters.onnx_export.export_onnx` calls it); torch's eager
GroupNorm is untouched, so training, Opacus and the torch backend see no change.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.onnx import register_custom_op_symbolic, symbolic_helper

# The opset the project exports at (`exporters.onnx_export.export_onnx`): ReduceMean takes
# its axes as an attribute up to opset 17, Unsqueeze as an input since opset 13.
OPSET = 17
_registered = False


def _const(g: Any, values: list[int]) -> Any:
    return g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))


def _group_mean(g: Any, y: Any) -> Any:
    """The mean of (N, G, C/G, H, W) over its last three axes, one axis at a time."""
    for axis in (4, 3, 2):
        y = g.op("ReduceMean", y, axes_i=[axis], keepdims_i=1)
    return y


@symbolic_helper.parse_args("v", "i", "v", "v", "f", "i")
def group_norm_symbolic(
    g: Any, x: Any, num_groups: int, weight: Any, bias: Any, eps: float, cudnn_enabled: int
) -> Any:
    """``aten::group_norm`` of an (N, C, H, W) input as two-pass arithmetic (see above)."""
    del cudnn_enabled  # a CUDA implementation detail; the arithmetic is the same
    # (N, 1, C, H, W), then (N, G, C/G, H, W): Reshape's 0 copies N, H and W.
    grouped = g.op(
        "Reshape", g.op("Unsqueeze", x, _const(g, [1])), _const(g, [0, num_groups, -1, 0, 0])
    )
    centred = g.op("Sub", grouped, _group_mean(g, grouped))
    var = _group_mean(g, g.op("Mul", centred, centred))
    eps_t = g.op("Constant", value_t=torch.tensor(eps, dtype=torch.float32))
    normed = g.op("Div", centred, g.op("Sqrt", g.op("Add", var, eps_t)))
    out = g.op("Reshape", normed, g.op("Shape", x))
    if not symbolic_helper._is_none(weight):
        out = g.op("Mul", out, g.op("Unsqueeze", weight, _const(g, [1, 2])))
    if not symbolic_helper._is_none(bias):
        out = g.op("Add", out, g.op("Unsqueeze", bias, _const(g, [1, 2])))
    return out


def register() -> None:
    """Export ``aten::group_norm`` with `group_norm_symbolic` from now on (idempotent)."""
    global _registered
    if not _registered:
        register_custom_op_symbolic("aten::group_norm", group_norm_symbolic, OPSET)
        _registered = True
