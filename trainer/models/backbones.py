"""The three backbones of the dual-stage ensemble classifier (`trainer.models.dual_stage`).

Each maps ``(N, C_in, S, S)`` to pooled features ``(N, features)``; C_in is 2 in the node
([preprocessed image, lesion probability]). Written here because torchvision / timm do not
work in this project, and with GroupNorm instead of BatchNorm throughout (the node runs
batch 1; Opacus DP-SGD refuses BatchNorm: see `trainer.models.mau_net`).

- `PreActResNet`: ResNet50V2 (He et al., "Identity Mappings in Deep Residual Networks",
  2016; Keras ``ResNet50V2``): a 7x7 stride-2 stem and 3x3 stride-2 max pool, then stages of
  pre-activation bottlenecks (norm, ReLU, 1x1 / 3x3 / 1x1, 4x expansion), a projection
  shortcut on the pre-activated input at each stage's first block, a final norm + ReLU and
  global average pooling. Paper widths: stages [3, 4, 6, 3], 64-128-256-512, 2048 features.
  The stride sits in each later stage's first block (the torch convention; Keras puts it in
  the last block of the previous stage: same depth, widths and feature size).
- `NASNetA`: NASNet-A (Zoph et al., "Learning Transferable Architectures for Scalable Image
  Recognition", CVPR 2018) with the normal and reduction cells of the paper's Fig. 4 as the
  reference Keras implementation builds them: five blocks per cell, each the sum of two
  branches drawn from separable 3x3 / 5x5 / 7x7 convolutions (each applied twice: ReLU,
  depthwise, pointwise, norm), 3x3 average / max pooling and identity; the normal cell
  concatenates its previous-cell input and the five block outputs (6 x filters), the
  reduction cell four block outputs (4 x filters) at half resolution. A cell's second input
  (the cell before) is brought to its filters by a 1x1 convolution, or by the factorised
  reduction (two offset 1x1 stride-2 paths, concatenated) when it is at twice the
  resolution. Stem: 3x3 stride-2 convolution, then two reduction cells; then three stacks of
  N normal cells with filters f, 2f, 4f, separated by reduction cells. NASNet-A Large:
  stem 96, N = 6, f = 168, 4032 features, skip-reduction. Deviations: GroupNorm with at
  least two channels per group, 'same' padding everywhere (Keras pads the stem 'valid' and
  stride-2 cells asymmetrically), no auxiliary head and no drop-path (regularisers of the
  ImageNet training).
- `MAUEncoder`: the residual encoder of `trainer.models.mau_net.MAUNet` with its dual
  (channel + spatial) attention, reused from that module: four residual levels, each
  followed by its attention and a 2x2 max pool, the bottleneck and its attention, global
  average pooling (16 x base width features). Unlike in the segmenter, where the attention
  refines the skip connections, here it sits in the path to the features (the classifier has
  no decoder to feed). `MAUEncoderSpec.input_pool` average-pools the input first (edge).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.models.mau_net import DEPTH, DualAttention, ResidualBlock, conv3x3, group_norm
from trainer.profiles import MAUEncoderSpec, NASNetSpec, ResNetV2Spec


def _pool(x: Tensor) -> Tensor:
    return torch.mean(x, dim=(2, 3))


# --------------------------------------------------------------------------- ResNet50V2


class PreActBottleneck(nn.Module):
    """norm-ReLU-conv1x1, norm-ReLU-conv3x3 (stride), norm-ReLU-conv1x1 (x expansion), plus
    the shortcut: a 1x1 projection of the pre-activated input where the shape changes."""

    def __init__(self, in_channels: int, width: int, expansion: int, stride: int) -> None:
        super().__init__()
        out_channels = width * expansion
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.norm2 = group_norm(width)
        self.conv2 = conv3x3(width, width, stride)
        self.norm3 = group_norm(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1)
        self.act = nn.ReLU()
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.act(self.norm1(x))
        residual = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.act(self.norm2(out)))
        out = self.conv3(self.act(self.norm3(out)))
        return out + residual


class PreActResNet(nn.Module):
    """ResNet50V2-style pre-activation bottleneck ResNet: (N, C, S, S) -> (N, features)."""

    def __init__(self, spec: ResNetV2Spec, in_channels: int = 2) -> None:
        super().__init__()
        self.spec = spec
        self.features = spec.features
        self.stem = nn.Conv2d(in_channels, spec.stem_width, 7, stride=2, padding=3)
        self.stem_pool = nn.MaxPool2d(3, stride=2, padding=1)
        blocks: list[nn.Module] = []
        previous = spec.stem_width
        for stage, (depth, width) in enumerate(zip(spec.depths, spec.widths, strict=True)):
            for index in range(depth):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(PreActBottleneck(previous, width, spec.expansion, stride))
                previous = width * spec.expansion
        self.blocks = nn.Sequential(*blocks)
        self.final_norm = group_norm(previous)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.stem_pool(self.stem(x)))
        return _pool(self.act(self.final_norm(x)))


# --------------------------------------------------------------------------- NASNet-A


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with at least two channels per group: NASNet's narrow cells reach 1 x 1
    maps at small inputs, where a one-channel group has a single value to normalise."""
    return group_norm(channels, max_groups=max(1, min(8, channels // 2)))


class SeparableConv(nn.Module):
    """NASNet's separable branch: (ReLU, depthwise k x k, pointwise 1x1, norm) twice; the
    stride, if any, in the first depthwise convolution."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        pad = kernel // 2
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(
                in_channels, in_channels, kernel, stride, pad, groups=in_channels, bias=False
            ),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            _norm(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, kernel, 1, pad, groups=out_channels, bias=False),
            nn.Conv2d(out_channels, out_channels, 1, bias=False),
            _norm(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def _avg3(stride: int = 1) -> nn.AvgPool2d:
    # Average over the window's real pixels only, as Keras' 'same' pooling does.
    return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)


def _max3(stride: int = 1) -> nn.MaxPool2d:
    return nn.MaxPool2d(3, stride=stride, padding=1)


class SqueezeConv(nn.Module):
    """ReLU, 1x1 convolution, norm: a cell input brought to the cell's filters."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(), nn.Conv2d(in_channels, out_channels, 1, bias=False), _norm(out_channels)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class FactorizedReduction(nn.Module):
    """The previous-cell input at twice the resolution, halved: ReLU, then two 1x1 stride-2
    paths, the second offset by one pixel, each with half the filters; concatenated, norm."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if out_channels % 2:
            raise ValueError(f"factorised reduction needs even filters, got {out_channels}")
        half = out_channels // 2
        self.path1 = nn.Conv2d(in_channels, half, 1, bias=False)
        self.path2 = nn.Conv2d(in_channels, half, 1, bias=False)
        self.norm = _norm(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        a = self.path1(x[:, :, ::2, ::2])  # = 1x1 average pool, stride 2
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        b = self.path2(shifted[:, :, ::2, ::2])
        return self.norm(torch.cat([a, b], dim=1))


def _adjust(prev_channels: int, prev_level: int, level: int, filters: int) -> nn.Module:
    """What brings the previous-cell input (`prev_level`) to this cell's (`level`) shape."""
    if prev_level == level - 1:
        return FactorizedReduction(prev_channels, filters)
    if prev_level != level:
        raise ValueError(
            f"NASNet cell inputs {level - prev_level} reductions apart: at most one is "
            "supported (check the cell sequence)"
        )
    return SqueezeConv(prev_channels, filters)


class NormalCell(nn.Module):
    """NASNet-A normal cell: h = the current input, p = the previous one, both at `filters`.

    Blocks: sep5(h) + sep3(p); sep5(p) + sep3(p); avg3(h) + p; avg3(p) + avg3(p);
    sep3(h) + h; output concat(p, blocks) with 6 x filters channels.
    """

    def __init__(self, in_channels: int, prev: nn.Module, filters: int) -> None:
        super().__init__()
        self.prev = prev
        self.squeeze = SqueezeConv(in_channels, filters)
        self.b1_h, self.b1_p = (
            SeparableConv(filters, filters, 5),
            SeparableConv(filters, filters, 3),
        )
        self.b2_p5, self.b2_p3 = (
            SeparableConv(filters, filters, 5),
            SeparableConv(filters, filters, 3),
        )
        self.b3_h = _avg3()
        self.b4_a, self.b4_b = _avg3(), _avg3()
        self.b5_h = SeparableConv(filters, filters, 3)
        self.out_channels = 6 * filters

    def forward(self, x: Tensor, previous: Tensor) -> Tensor:
        h, p = self.squeeze(x), self.prev(previous)
        return torch.cat(
            [
                p,
                self.b1_h(h) + self.b1_p(p),
                self.b2_p5(p) + self.b2_p3(p),
                self.b3_h(h) + p,
                self.b4_a(p) + self.b4_b(p),
                self.b5_h(h) + h,
            ],
            dim=1,
        )


class ReductionCell(nn.Module):
    """NASNet-A reduction cell, output at half resolution with 4 x filters channels.

    Blocks: x1 = sep5/2(h) + sep7/2(p); x2 = max3/2(h) + sep7/2(p); x3 = avg3/2(h) + sep5/2(p);
    x4 = avg3(x1) + x2; x5 = sep3(x1) + max3/2(h); output concat(x2, x3, x4, x5).
    `prev` None: the first stem cell, whose second input is its own input (`in_channels`).
    """

    def __init__(self, in_channels: int, prev: nn.Module | None, filters: int) -> None:
        super().__init__()
        self.prev = prev
        p_channels = in_channels if prev is None else filters
        self.squeeze = SqueezeConv(in_channels, filters)
        self.b1_h = SeparableConv(filters, filters, 5, 2)
        self.b1_p = SeparableConv(p_channels, filters, 7, 2)
        self.b2_h = _max3(2)
        self.b2_p = SeparableConv(p_channels, filters, 7, 2)
        self.b3_h = _avg3(2)
        self.b3_p = SeparableConv(p_channels, filters, 5, 2)
        self.b4 = _avg3()
        self.b5_x1 = SeparableConv(filters, filters, 3)
        self.b5_h = _max3(2)
        self.out_channels = 4 * filters

    def forward(self, x: Tensor, previous: Tensor | None) -> Tensor:
        h = self.squeeze(x)
        p = x if self.prev is None or previous is None else self.prev(previous)
        x1 = self.b1_h(h) + self.b1_p(p)
        x2 = self.b2_h(h) + self.b2_p(p)
        x3 = self.b3_h(h) + self.b3_p(p)
        x4 = self.b4(x1) + x2
        x5 = self.b5_x1(x1) + self.b5_h(h)
        return torch.cat([x2, x3, x4, x5], dim=1)


class NASNetA(nn.Module):
    """NASNet-A over (N, C, S, S) -> (N, features); see the module docstring."""

    def __init__(self, spec: NASNetSpec, in_channels: int = 2) -> None:
        super().__init__()
        self.spec = spec
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, spec.stem_filters, 3, stride=2, padding=1, bias=False),
            _norm(spec.stem_filters),
        )
        f, m = spec.filters, spec.filter_multiplier
        # Each plan entry: (kind, filters). The channels and resolution level of the current
        # and previous tensors are tracked so each cell's `prev` adapter is built statically.
        plan: list[tuple[str, int]] = [("reduce", f // m**2), ("reduce", f // m)]
        for stack in range(3):
            if stack:
                plan.append(("reduce", f * m**stack))
            plan.extend(("normal", f * m**stack) for _ in range(spec.cells))
        # Keras semantics: a cell returns (its output, its input), so the next cell's second
        # input is the previous cell's input; with skip_reduction, the normal cell after a
        # (non-stem) reduction gets the input of the cell before the reduction instead.
        # Tensor 0 is the stem output and cell i writes tensor i + 1, so cell i reads tensor
        # i and its previous input is tensor i - 1 (i - 2 when skipping; none for cell 0).
        channels, levels = [spec.stem_filters], [1]
        cells: list[nn.Module] = []
        self.sources: list[int] = []
        for i, (kind, filters) in enumerate(plan):
            skip = (
                spec.skip_reduction and kind == "normal" and i >= 3 and plan[i - 1][0] == "reduce"
            )
            source = i - 2 if skip else i - 1
            if kind == "reduce":
                prev = (
                    None
                    if source < 0
                    else _adjust(channels[source], levels[source], levels[i], filters)
                )
                cell: NormalCell | ReductionCell = ReductionCell(channels[i], prev, filters)
            else:
                prev = _adjust(channels[source], levels[source], levels[i], filters)
                cell = NormalCell(channels[i], prev, filters)
            cells.append(cell)
            self.sources.append(source)
            channels.append(cell.out_channels)
            levels.append(levels[i] + (1 if kind == "reduce" else 0))
        self.cells = nn.ModuleList(cells)
        self.features = channels[-1]
        if self.features != spec.features:
            raise AssertionError(f"NASNet built {self.features} features, spec {spec.features}")

    def forward(self, x: Tensor) -> Tensor:
        tensors = [self.stem(x)]
        for cell, source in zip(self.cells, self.sources, strict=True):
            previous = tensors[source] if source >= 0 else None
            tensors.append(cell(tensors[-1], previous))
        return _pool(F.relu(tensors[-1]))


# --------------------------------------------------------------------------- MAU-Net encoder


class MAUEncoder(nn.Module):
    """MAU-Net's residual encoder with dual attention, pooled: (N, C, S, S) -> (N, 16 x base)."""

    def __init__(self, spec: MAUEncoderSpec, in_channels: int = 2, reduction: int = 8) -> None:
        super().__init__()
        self.spec = spec
        widths = [spec.base_width * 2**i for i in range(DEPTH + 1)]
        self.encoders = nn.ModuleList()
        previous = in_channels
        for width in widths[:DEPTH]:
            self.encoders.append(ResidualBlock(previous, width))
            previous = width
        self.attention = nn.ModuleList(DualAttention(w, reduction) for w in widths[:DEPTH])
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = ResidualBlock(widths[DEPTH - 1], widths[DEPTH])
        self.bottleneck_attention = DualAttention(widths[DEPTH], reduction)
        self.features = widths[DEPTH]
        self.input_pool: nn.Module = (
            nn.AvgPool2d(spec.input_pool) if spec.input_pool > 1 else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.input_pool(x)
        for encoder, attention in zip(self.encoders, self.attention, strict=True):
            x = self.pool(attention(encoder(x)))
        return _pool(self.bottleneck_attention(self.bottleneck(x)))


__all__ = [
    "FactorizedReduction",
    "MAUEncoder",
    "NASNetA",
    "NormalCell",
    "PreActBottleneck",
    "PreActResNet",
    "ReductionCell",
    "SeparableConv",
]
