"""The ACGAN of FAME: a class-conditional generator and a two-headed discriminator.

FAME ("ACGAN") generates class-specific synthetic ultrasound images at each site to
rebalance the minority classes. The generator maps a noise vector and a class (normal /
benign / malignant, `CLASSES`) to one greyscale image in the range of the node's
preprocessed input (z-scores, see `appliance.preprocess`); the discriminator returns a
real/fake logit and three class logits (the auxiliary classifier).

Normalisation: GroupNorm in the generator and spectral norm in the discriminator, never
BatchNorm, so an image's output does not depend on the rest of its batch (a batch of real
images and a batch of fakes would otherwise be normalised apart, and one image at a time
behaves like a batch of many).

`IMAGE_SCALE` maps the generator's tanh output to z-scores: training images are clipped to
±`IMAGE_SCALE` and divided by it (`to_gan_range`), generated ones multiplied back
(`from_gan_range`).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from trainer.models.classifier import CLASSES
from trainer.models.mau_net import group_norm

IMAGE_SCALE = 3.0


def to_gan_range(images: Tensor) -> Tensor:
    """Preprocessed images (z-scores, letterbox 0) to the generator's [-1, 1]."""
    return images.clamp(-IMAGE_SCALE, IMAGE_SCALE) / IMAGE_SCALE


def from_gan_range(images: Tensor) -> Tensor:
    """Generator output in [-1, 1] back to the node's preprocessed z-score range."""
    return images * IMAGE_SCALE


def _stages(size: int) -> int:
    """Number of x2 up/down-sampling steps between a 4x4 map and a `size` image."""
    stages = round(math.log2(size / 4)) if size >= 8 else 0
    if size < 8 or 4 * 2**stages != size:
        raise ValueError(
            f"ACGAN image size must be a power of two >= 8 (e.g. 32, 64, 128), got {size}"
        )
    return stages


class ACGANGenerator(nn.Module):
    """Noise (N, latent_dim) and class indices (N,) -> images (N, 1, size, size) in [-1, 1].

    The class enters as a learned embedding multiplied into the noise (the ACGAN paper's
    conditioning); a linear layer makes a 4x4 map, then each stage doubles the side
    (nearest upsampling + 3x3 convolution, GroupNorm, ReLU) and halves the channels.
    """

    def __init__(
        self, latent_dim: int = 64, size: int = 64, width: int = 32, n_classes: int = len(CLASSES)
    ) -> None:
        super().__init__()
        self.latent_dim, self.size, self.n_classes = latent_dim, size, n_classes
        stages = _stages(size)
        channels = [width * 2 ** min(stages - i, 3) for i in range(stages + 1)]
        self.embed = nn.Embedding(n_classes, latent_dim)
        self.project = nn.Sequential(nn.Linear(latent_dim, channels[0] * 16), nn.ReLU(inplace=True))
        self.first_channels = channels[0]
        blocks: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(channels):
            blocks += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                group_norm(c_out),
                nn.ReLU(inplace=True),
            ]
        self.blocks = nn.Sequential(*blocks)
        self.to_image = nn.Conv2d(channels[-1], 1, 3, padding=1)

    def forward(self, noise: Tensor, labels: Tensor) -> Tensor:
        if noise.ndim != 2 or noise.shape[1] != self.latent_dim:
            raise ValueError(
                f"generator noise must be (N, {self.latent_dim}), got {tuple(noise.shape)}"
            )
        h = self.project(noise * self.embed(labels))
        h = h.view(len(noise), self.first_channels, 4, 4)
        return torch.tanh(self.to_image(self.blocks(h)))

    def sample(self, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Images of `labels` from fresh noise drawn from `generator` (eval mode, no grad)."""
        noise = torch.randn(len(labels), self.latent_dim, generator=generator)
        was_training = self.training
        self.eval()
        with torch.no_grad():
            out = self(noise, labels)
        self.train(was_training)
        return out


class ACGANDiscriminator(nn.Module):
    """Images (N, 1, size, size) -> (real/fake logit (N, 1), class logits (N, n_classes)).

    Strided 4x4 spectral-normalised convolutions with LeakyReLU halve the side down to 4x4;
    both heads read the same flattened features.
    """

    def __init__(self, size: int = 64, width: int = 32, n_classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.size = size
        stages = _stages(size)
        channels = [1] + [width * 2 ** min(i, 3) for i in range(stages)]
        layers: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(channels):
            layers += [
                spectral_norm(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.adversarial = spectral_norm(nn.Linear(channels[-1] * 16, 1))
        self.auxiliary = nn.Linear(channels[-1] * 16, n_classes)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if images.ndim != 4 or images.shape[1:] != (1, self.size, self.size):
            raise ValueError(
                f"discriminator input must be (N, 1, {self.size}, {self.size}), "
                f"got {tuple(images.shape)}"
            )
        h = self.features(images)
        return self.adversarial(h), self.auxiliary(h)
