"""Soft targets of a trained teacher `FameNodeNet` for distilling it into a student.

`Teacher` is the hook `trainer.loops.train_segmenter` and `train_classifier` take (None:
trained on the labels alone, bit for bit as before); `trainer.distill` builds one from a
verified bundle. The teacher runs in eval mode under `torch.no_grad()` on the *same*
augmented batch the student sees, so its targets follow every flip, rotation, zoom and
intensity jitter of the batch.

Stage 1 (segmentation) adds `weight` x `soft_map_loss` (student logits against the
teacher's probability map). Stage 2 (classification) adds `weight` x `kd_loss`: T^2 x
KL(teacher || student) of the class distributions softened at temperature T (Hinton,
Vinyals, Dean 2015, "Distilling the Knowledge in a Neural Network"). The teacher's torch
classifier gives raw logits; the calibration temperature its exported ONNX head applies is
not part of the torch model, so it plays no part here. The teacher's classifier gets the
teacher's own lesion map (`lesion_maps`, computed once per image like the student's map,
then augmented together with image and student map as channel 2 of the batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.device import model_device
from trainer.device import to as to_device
from trainer.models import FameNodeNet

SMOOTH = 1.0  # of the soft Dice term, as `trainer.losses.soft_dice_loss`


def bernoulli_kl(logits: Tensor, target: Tensor) -> Tensor:
    """Mean per-pixel KL(target || sigmoid(logits)) of Bernoulli distributions.

    This is BCE with the soft target minus the target's own entropy: the same gradient as
    soft-target BCE, but exactly 0 where the student reproduces the teacher's map.
    """
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    kl = (
        torch.xlogy(target, target)
        - target * log_p
        + torch.xlogy(1.0 - target, 1.0 - target)
        - (1.0 - target) * log_not_p
    )
    return kl.mean()


def soft_dice_distance(logits: Tensor, target: Tensor, smooth: float = SMOOTH) -> Tensor:
    """Per-image ``|p - q|^2 / (|p|^2 + |q|^2 + smooth)`` (1 - the squared-form soft Dice
    of V-Net), averaged over the batch; p the student's and q the teacher's map.

    The plain soft Dice ``2<p,q> / (|p| + |q|)`` is below 1 even for p == q when q is not
    binary, so it would pull the student towards a harder map than the teacher's; this
    form is 0 exactly at p == q and positive otherwise.
    """
    p, q = torch.sigmoid(logits).flatten(1), target.flatten(1)
    return ((p - q).square().sum(1) / (p.square().sum(1) + q.square().sum(1) + smooth)).mean()


def soft_map_loss(logits: Tensor, target: Tensor) -> Tensor:
    """The stage-1 soft loss: `bernoulli_kl` + `soft_dice_distance` against the teacher map.

    Why both: the per-pixel KL carries the teacher's graded confidence at every pixel (its
    uncertain boundaries, the dark knowledge a binary mask lacks), but as a mean over the
    image it is dominated by the background of a small lesion. The Dice-like term is
    normalised by the size of the maps, so a small lesion counts as much as a large one,
    just as the Dice half of `trainer.losses.dice_bce_loss` does for the ground truth.
    Both are 0 exactly where the student's map equals the teacher's.
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")
    return bernoulli_kl(logits, target) + soft_dice_distance(logits, target)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 x KL(softmax(teacher / T) || softmax(student / T)), mean over the batch.

    The T^2 keeps the gradient's scale independent of T (Hinton et al. 2015), so the
    weight of the term means the same at any temperature.
    """
    if temperature <= 0:
        raise ValueError(f"distillation temperature {temperature}: must be > 0")
    t = float(temperature)
    kl = F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits / t, dim=1),
        log_target=True,
        reduction="batchmean",
    )
    return kl * t * t


class Teacher:
    """A frozen teacher net and the weight / temperature of its soft terms."""

    def __init__(self, net: FameNodeNet, weight: float = 1.0, temperature: float = 2.0) -> None:
        if weight < 0:
            raise ValueError(f"distillation weight {weight}: must be >= 0")
        if temperature <= 0:
            raise ValueError(f"distillation temperature {temperature}: must be > 0")
        self.net = net.eval().requires_grad_(False)
        self.weight, self.temperature = float(weight), float(temperature)

    @torch.no_grad()
    def segmentation(self, images: Tensor) -> Tensor:
        """The teacher's lesion probability (N, 1, S, S) of `images` (N, 1, S, S); for a fold
        ensemble the mean of the folds' maps, as the teacher's own classifier got it."""
        self.net.eval()
        return torch.sigmoid(self.net.segmenter(images))

    @torch.no_grad()
    def lesion_maps(self, images: Tensor, batch_size: int = 32) -> Tensor:
        """`segmentation` of many unaugmented images, in batches: the teacher's classifier
        input channel, augmented afterwards with the batch like the student's map."""
        dev = model_device(self.net)
        return torch.cat(
            [
                self.segmentation(to_device(images[i : i + batch_size], dev)).cpu()
                for i in range(0, len(images), batch_size)
            ]
        )

    def to(self, device: torch.device) -> Teacher:
        """The teacher net moved to `device` (the student's, while it trains); returns self."""
        self.net.to(device)
        return self

    @torch.no_grad()
    def class_logits(self, inputs: Tensor) -> Tensor:
        """The teacher classifier's raw logits of [image, teacher lesion map] (N, 2, S, S)."""
        self.net.eval()
        return self.net.classifier(inputs)

    def segmentation_term(self, logits: Tensor, batch: Tensor) -> Tensor:
        """`weight` x `soft_map_loss` of the student's logits against the teacher's map of
        the batch's image channel (``batch[:, :1]``, the augmented image the student saw)."""
        return self.weight * soft_map_loss(logits, self.segmentation(batch[:, :1]))

    def classification_term(self, logits: Tensor, batch: Tensor) -> Tensor:
        """`weight` x `kd_loss` of the student's logits against the teacher's on the same
        augmented batch: channel 0 the image, channel 2 the teacher's own lesion map."""
        if batch.shape[1] != 3:
            raise ValueError(
                f"a distillation batch has 3 channels (image, student map, teacher map), got "
                f"{batch.shape[1]}: build it with Teacher.lesion_maps (trainer.loops does)"
            )
        teacher = self.class_logits(batch[:, [0, 2]])
        return self.weight * kd_loss(logits, teacher, self.temperature)


__all__ = [
    "Teacher",
    "bernoulli_kl",
    "kd_loss",
    "soft_dice_distance",
    "soft_map_loss",
]
