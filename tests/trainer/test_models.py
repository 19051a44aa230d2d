"""Unit tests of the network definitions (tiny widths, 32x32 inputs)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from trainer.models import (
    CLASSES,
    ChannelAttention,
    DualAttention,
    FameNodeNet,
    LesionClassifier,
    MAUNet,
    SpatialAttention,
)

SIZE = 32


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def tiny_segmenter() -> MAUNet:
    return MAUNet(base_width=4)


def tiny_classifier() -> LesionClassifier:
    return LesionClassifier(in_channels=2, widths=(4, 8, 8, 8))


def test_mau_net_output_shape() -> None:
    out = tiny_segmenter()(torch.randn(2, 1, SIZE, SIZE))
    assert out.shape == (2, 1, SIZE, SIZE)


def test_mau_net_default_widths() -> None:
    net = MAUNet()
    widths = [block.body[0].out_channels for block in net.encoders]
    assert widths == [16, 32, 64, 128]
    assert net.bottleneck.body[0].out_channels == 256


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((1, 1, 30, 32), "divisible by 16"),
        ((1, 3, 32, 32), r"\(N, 1, S, S\)"),
        ((32, 32), "expects a"),
    ],
)
def test_mau_net_rejects_bad_input(shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny_segmenter()(torch.randn(*shape))


@pytest.mark.parametrize(
    "module", [ChannelAttention(8, reduction=2), SpatialAttention(), DualAttention(8, 2)]
)
def test_attention_preserves_shape_and_changes_features(module: nn.Module) -> None:
    x = torch.randn(2, 8, 16, 16)
    y = module(x)
    assert y.shape == x.shape
    assert not torch.allclose(x, y)


def test_channel_attention_scales_whole_channels() -> None:
    x = torch.rand(1, 8, 6, 6) + 0.1
    ratio = ChannelAttention(8, reduction=2)(x) / x
    # One gate per channel: constant over the spatial positions, strictly inside (0, 1).
    assert torch.allclose(ratio, ratio[..., :1, :1].expand_as(ratio), atol=1e-6)
    assert bool(((ratio > 0) & (ratio < 1)).all())


def test_spatial_attention_scales_whole_positions() -> None:
    x = torch.rand(1, 8, 6, 6) + 0.1
    ratio = SpatialAttention()(x) / x
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-6)


@pytest.mark.parametrize("factory", [tiny_segmenter, tiny_classifier])
def test_gradients_reach_every_parameter(factory: Callable[[], nn.Module]) -> None:
    model = factory()
    in_channels = 1 if isinstance(model, MAUNet) else 2
    model(torch.randn(2, in_channels, SIZE, SIZE)).square().mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert bool(param.grad.abs().sum() > 0), name


def test_group_norm_everywhere_no_batch_norm() -> None:
    net = FameNodeNet(MAUNet(), LesionClassifier())
    modules = list(net.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in modules)
    assert sum(isinstance(m, nn.GroupNorm) for m in modules) > 20


def test_classifier_output_shape() -> None:
    logits = tiny_classifier()(torch.randn(3, 2, SIZE, SIZE))
    assert logits.shape == (3, len(CLASSES))
    assert CLASSES == ("normal", "benign", "malignant")


def test_classifier_rejects_wrong_channels() -> None:
    with pytest.raises(ValueError, match="lesion probability"):
        tiny_classifier()(torch.randn(1, 1, SIZE, SIZE))


def test_combined_outputs_are_probabilities() -> None:
    net = FameNodeNet(tiny_segmenter(), tiny_classifier()).eval()
    with torch.no_grad():
        lesion, classes = net(torch.randn(3, 1, SIZE, SIZE))
    assert lesion.shape == (3, 1, SIZE, SIZE)
    assert bool(((lesion >= 0) & (lesion <= 1)).all())
    assert classes.shape == (3, 3)
    assert torch.allclose(classes.sum(dim=1), torch.ones(3), atol=1e-6)


def test_combined_classifier_sees_the_lesion_map() -> None:
    seg, cls = tiny_segmenter(), tiny_classifier()
    net = FameNodeNet(seg, cls).eval()
    x = torch.randn(1, 1, SIZE, SIZE)
    with torch.no_grad():
        _, classes = net(x)
        expected = torch.softmax(cls(torch.cat([x, torch.sigmoid(seg(x))], dim=1)), dim=1)
    assert torch.allclose(classes, expected)


def test_combined_rejects_mismatched_classifier() -> None:
    with pytest.raises(ValueError, match="2 channels"):
        FameNodeNet(tiny_segmenter(), LesionClassifier(in_channels=3, widths=(4,)))
