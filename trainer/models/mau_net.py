"""MAU-Net, the Multi Attention U-Net of the FAME paper, for lesion segmentation.

A U-Net with four down-sampling levels whose encoder is built of residual blocks, and whose
skip connections and bottleneck are refined by CBAM-style channel and spatial attention
before the decoder uses them. The head gives one lesion logit per pixel.

Normalisation is GroupNorm everywhere, not BatchNorm as in the paper: the node runs
inference on one image at a time (batch statistics of a batch of one are meaningless and
running statistics drift between hospitals), and the federated fine-tuning with Opacus
DP-SGD refuses BatchNorm because it mixes samples inside a batch, which breaks per-sample
gradients. GroupNorm normalises each sample on its own and has neither problem.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

DEPTH = 4  # down-sampling levels: the input side must be divisible by 2**DEPTH
# Each level's down-sampling against the input (`MAUNet.forward_with_levels`): the four
# encoder levels, then the bottleneck.
LEVEL_SCALES: tuple[int, ...] = tuple(2**i for i in range(DEPTH + 1))


def group_norm(channels: int, max_groups: int = 8) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= `max_groups` that divides `channels`."""
    groups = max(g for g in range(1, max_groups + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    # No bias: a norm layer follows and would cancel it.
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv_pair(in_channels: int, out_channels: int) -> list[nn.Module]:
    """conv3x3 + GroupNorm + ReLU + conv3x3 + GroupNorm: the body shared by the encoder's
    residual blocks (the ReLU after the sum) and the decoder's double convolutions."""
    return [
        conv3x3(in_channels, out_channels),
        group_norm(out_channels),
        nn.ReLU(inplace=True),
        conv3x3(out_channels, out_channels),
        group_norm(out_channels),
    ]


class ResidualBlock(nn.Module):
    """Two 3x3 conv + GroupNorm + ReLU with a 1x1 projection shortcut (identity if same width)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*conv_pair(in_channels, out_channels))
        self.shortcut: nn.Module = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False), group_norm(out_channels)
            )
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class DoubleConv(nn.Module):
    """The decoder's refinement: two 3x3 conv + GroupNorm + ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*conv_pair(in_channels, out_channels), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class ChannelAttention(nn.Module):
    """CBAM channel attention: avg- and max-pooled descriptors through a shared MLP.

    ``x * sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))``; the MLP is two 1x1 convolutions
    with a ReLU between them and a hidden width of ``channels // reduction`` (at least 4).
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        avg = torch.mean(x, dim=(2, 3), keepdim=True)
        peak = torch.amax(x, dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.mlp(avg) + self.mlp(peak))


class SpatialAttention(nn.Module):
    """CBAM spatial attention: channel-wise mean and max, concatenated, 7x7 conv, sigmoid."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"spatial attention kernel must be odd, got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat(
            [torch.mean(x, dim=1, keepdim=True), torch.amax(x, dim=1, keepdim=True)], dim=1
        )
        return x * torch.sigmoid(self.conv(pooled))


class DualAttention(nn.Module):
    """Channel attention followed by spatial attention (CBAM order).

    `channel` / `spatial` False replace that attention by the identity: the ablations of
    issue 10 (MAU-Net without channel, without spatial, without both attentions).
    """

    def __init__(
        self, channels: int, reduction: int = 8, *, channel: bool = True, spatial: bool = True
    ) -> None:
        super().__init__()
        self.channel: nn.Module = (
            ChannelAttention(channels, reduction) if channel else nn.Identity()
        )
        self.spatial: nn.Module = SpatialAttention() if spatial else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.spatial(self.channel(x))


class DecoderBlock(nn.Module):
    """Transpose-conv x2 up-sampling, concatenation with the attended skip, two 3x3 convs."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(out_channels + skip_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class MAUNet(nn.Module):
    """Multi Attention U-Net: (N, in_channels, S, S) -> lesion logits (N, 1, S, S).

    Parameters
    ----------
    in_channels:
        Input channels (1: the preprocessed greyscale frame).
    base_width:
        Channels of the first level; the levels have base, 2x, 4x, 8x and the bottleneck
        16x (16-32-64-128, bottleneck 256 by default).
    reduction:
        Hidden-width reduction of the channel-attention MLP.
    channel_attention, spatial_attention:
        False drops that attention everywhere (skips and bottleneck): ablation variants.

    S must be divisible by 16 (four 2x2 poolings).
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_width: int = 16,
        reduction: int = 8,
        *,
        channel_attention: bool = True,
        spatial_attention: bool = True,
    ) -> None:
        super().__init__()
        if in_channels < 1 or base_width < 1:
            raise ValueError(
                f"in_channels and base_width must be >= 1, got {in_channels}, {base_width}"
            )
        self.in_channels = in_channels
        self.base_width = base_width
        self.channel_attention = channel_attention
        self.spatial_attention = spatial_attention
        attend = {"channel": channel_attention, "spatial": spatial_attention}
        widths = [base_width * 2**i for i in range(DEPTH + 1)]
        self.encoders = nn.ModuleList()
        previous = in_channels
        for width in widths[:DEPTH]:
            self.encoders.append(ResidualBlock(previous, width))
            previous = width
        self.skip_attention = nn.ModuleList(
            DualAttention(w, reduction, **attend) for w in widths[:DEPTH]
        )
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = ResidualBlock(widths[DEPTH - 1], widths[DEPTH])
        self.bottleneck_attention = DualAttention(widths[DEPTH], reduction, **attend)
        self.decoders = nn.ModuleList(
            DecoderBlock(widths[i + 1], widths[i], widths[i]) for i in reversed(range(DEPTH))
        )
        self.head = nn.Conv2d(widths[0], 1, kernel_size=1)
        # No parameters; a module so that its ops have a scope of their own in the ONNX
        # graph, which the FP16 export keeps in float32 (`exporters.fp16.DEFAULT_KEEP_FP32`).
        self.ood_stats = LayerStats()

    def check_input(self, x: Tensor) -> None:
        """Raise ValueError unless `x` is (N, in_channels, S, S) with S divisible by 16."""
        step = 2**DEPTH
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"MAU-Net expects a (N, {self.in_channels}, S, S) tensor, got shape "
                f"{tuple(x.shape)}; add the batch and channel axes (x[None, None])."
            )
        height, width = int(x.shape[2]), int(x.shape[3])
        if height % step or width % step:
            raise ValueError(
                f"MAU-Net expects height and width divisible by {step}, got {height}x{width}; "
                f"preprocess with a size that is a multiple of {step}."
            )

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_stats(x, keep_stats=False)[0]

    def forward_with_stats(self, x: Tensor, keep_stats: bool = True) -> tuple[Tensor, list[Tensor]]:
        """The logits and, with `keep_stats`, each encoder level's and the bottleneck's
        activation statistics: per channel the spatial mean and standard deviation,
        (N, 2 C) per level, shallowest first (`layer_stats`). They describe the image's
        texture and contrast as the network sees it; the out-of-distribution score
        (`trainer.ood`) is fitted on them."""
        logits, levels = self.forward_with_levels(x, keep_levels=keep_stats)
        return logits, [self.ood_stats(level) for level in levels]

    def forward_with_levels(
        self, x: Tensor, keep_levels: bool = True
    ) -> tuple[Tensor, list[Tensor]]:
        """The logits and, with `keep_levels`, the activations the statistics are taken of:
        each encoder level's output and the bottleneck's, (N, C_l, S / 2**l, S / 2**l),
        shallowest first (`LEVEL_SCALES`)."""
        self.check_input(x)
        skips: list[Tensor] = []
        levels: list[Tensor] = []
        for encoder, attention in zip(self.encoders, self.skip_attention, strict=True):
            x = encoder(x)
            if keep_levels:
                levels.append(x)
            skips.append(attention(x))
            x = self.pool(x)
        x = self.bottleneck_attention(self.bottleneck(x))
        if keep_levels:
            levels.append(x)
        for decoder, skip in zip(self.decoders, reversed(skips), strict=True):
            x = decoder(x, skip)
        return self.head(x), levels


class LayerStats(nn.Module):
    """`layer_stats` as a module (see `MAUNet.ood_stats`)."""

    def forward(self, x: Tensor) -> Tensor:
        return layer_stats(x)


def layer_stats(x: Tensor) -> Tensor:
    """Per channel the spatial mean and (population) standard deviation of (N, C, H, W):
    (N, 2 C). Written out rather than `torch.std`, so eager and ONNX compute the same; each
    mean taken over the width, then the height, so that ONNX Runtime's float32 sums stay
    short (one ReduceMean over a 128 x 128 level is five times less exact: 1.0e-6 against
    2.1e-7 from float64; see exporters.group_norm for why the OOD score needs it)."""
    mean = x.mean(dim=3).mean(dim=2)
    var = (x - mean[:, :, None, None]).pow(2).mean(dim=3).mean(dim=2)
    return torch.cat([mean, torch.sqrt(var + 1e-8)], dim=1)
