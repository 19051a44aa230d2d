"""One node's local fine-tuning of a `FameNodeNet`: DP-SGD with Opacus, or plain SGD.

Both heads are trained together on the node's training arrays: Dice + BCE on the lesion
logits, cross-entropy on the class logits (the classifier seeing ``[image, lesion_prob]``,
as at inference). With `DpSgd` settings the optimiser is Opacus's (`PrivacyEngine.
make_private`): each example's gradient clipped to ``max_grad_norm``, Gaussian noise of
``noise_multiplier * max_grad_norm`` added to every step's sum, batches drawn by Poisson
sampling at rate ``1 / ceil(N / batch_size)``. What it spends is Opacus's own
accountant history, returned as `LocalTrainResult.dp` ``(noise_multiplier, sample_rate,
steps)``: the record a node's privacy ledger stores and re-accounts. `plan_round` gives
the same figures *before* training so that the budget can be checked first.

Example-level DP protects each training image of this node (its presence or absence
changes what the node sends by at most the (epsilon, delta) bound) against everyone who
sees the node's update: the coordinator, other nodes, whoever sees a global model. It
assumes the node's own code and machine are not compromised.

FedProx's proximal term ``mu / 2 * ||w - w_global||^2`` is applied as its own step after
each optimiser step (``w -= lr * mu * (w - w_global)``): it depends only on the public
global model, so it is post-processing and leaves the DP guarantee as it is (Opacus
computes per-example gradients of the loss only; a proximal term in the loss would be
silently left out of them).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from trainer.data import ArraySet
from trainer.federated import FederatedError
from trainer.losses import dice_bce_loss
from trainer.models import FameNodeNet


@dataclass(frozen=True)
class DpSgd:
    """Example-level DP-SGD: the node's own ``federation.privacy`` settings."""

    noise_multiplier: float
    max_grad_norm: float

    def __post_init__(self) -> None:
        if not (self.noise_multiplier > 0 and self.max_grad_norm > 0):
            raise FederatedError(
                f"DP-SGD needs noise_multiplier > 0 and max_grad_norm > 0, got "
                f"{self.noise_multiplier} and {self.max_grad_norm}"
            )


@dataclass(frozen=True)
class LocalSettings:
    epochs: int
    batch_size: int
    learning_rate: float
    proximal_mu: float = 0.0
    seed: int = 0
    threads: int = 1


@dataclass(frozen=True)
class RoundPlan:
    """What a round of DP-SGD will spend: Opacus's sample rate and step count."""

    sample_rate: float
    steps: int


@dataclass(frozen=True)
class LocalTrainResult:
    n_examples: int
    mean_loss: float
    seconds: float
    # Opacus's accountant history of this round: (noise_multiplier, sample_rate, steps);
    # None when trained without DP.
    dp: tuple[float, float, int] | None


class _TrainingView(nn.Module):
    """`FameNodeNet` returning logits (the bundle's graph returns probabilities)."""

    def __init__(self, net: FameNodeNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        return self.net.logits(image)


def plan_round(n_examples: int, settings: LocalSettings) -> RoundPlan:
    """Sample rate and steps Opacus will use for `n_examples` (as `make_private` does)."""
    if n_examples < 1:
        raise FederatedError("no training examples: nothing to plan")
    batches = math.ceil(n_examples / settings.batch_size)
    return RoundPlan(sample_rate=1.0 / batches, steps=settings.epochs * batches)


def train_local(
    net: FameNodeNet,
    data: ArraySet,
    settings: LocalSettings,
    dp: DpSgd | None,
    global_state: Sequence[NDArray[np.float32]] | None = None,
) -> LocalTrainResult:
    """Train `net` in place on `data`; returns what it spent (see the module docstring)."""
    if len(data) == 0:
        raise FederatedError("no training examples: the node sits this round out")
    started = time.perf_counter()
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    dataset = TensorDataset(
        torch.from_numpy(np.ascontiguousarray(data.images[:, None], dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(data.masks[:, None], dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(data.labels, dtype=np.int64)),
    )
    generator = torch.Generator().manual_seed(settings.seed)
    loader: DataLoader[tuple[Tensor, ...]] = DataLoader(
        dataset, batch_size=settings.batch_size, shuffle=True, generator=generator
    )
    _no_inplace_activations(net)
    view: nn.Module = _TrainingView(net)
    view.train()
    frozen = _freeze_unreached(view, dataset[0])
    try:
        return _train(view, net, data, loader, settings, dp, global_state, started)
    finally:
        for param in frozen:
            param.requires_grad_(True)


def _train(
    view: nn.Module,
    net: FameNodeNet,
    data: ArraySet,
    loader: DataLoader[tuple[Tensor, ...]],
    settings: LocalSettings,
    dp: DpSgd | None,
    global_state: Sequence[NDArray[np.float32]] | None,
    started: float,
) -> LocalTrainResult:
    optimizer: torch.optim.Optimizer = torch.optim.SGD(
        [p for p in view.parameters() if p.requires_grad],
        lr=settings.learning_rate,
        momentum=0.9,
    )
    engine = None
    if dp is not None:
        from opacus import PrivacyEngine  # imported here: only a training node needs it

        engine = PrivacyEngine(accountant="rdp", secure_mode=False)
        view, optimizer, loader = engine.make_private(
            module=view,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=dp.noise_multiplier,
            max_grad_norm=dp.max_grad_norm,
            poisson_sampling=True,
        )
    anchors = (
        [torch.from_numpy(np.asarray(a, np.float32)) for a in global_state]
        if global_state is not None and settings.proximal_mu > 0
        else None
    )
    losses: list[float] = []
    for _ in range(settings.epochs):
        for images, masks, labels in loader:
            if len(images) == 0:  # Poisson sampling may draw an empty batch: still a step
                optimizer.zero_grad(set_to_none=True)
                _empty_per_sample_gradients(view)
                optimizer.step()  # DP-SGD: the step is the noise alone, and it is accounted
                continue
            optimizer.zero_grad(set_to_none=True)
            seg_logits, cls_logits = view(images)
            loss = dice_bce_loss(seg_logits, masks) + F.cross_entropy(cls_logits, labels)
            loss.backward()
            optimizer.step()
            if anchors is not None:
                _proximal_step(net, anchors, settings.learning_rate * settings.proximal_mu)
            losses.append(float(loss.detach()))
    net.eval()
    record = None
    if engine is not None:
        history = engine.accountant.history
        if len(history) != 1:
            raise FederatedError(f"Opacus recorded {len(history)} settings for one round")
        noise, rate, steps = history[0]
        record = (float(noise), float(rate), int(steps))
    return LocalTrainResult(
        n_examples=len(data),
        mean_loss=float(np.mean(losses)) if losses else float("nan"),
        seconds=time.perf_counter() - started,
        dp=record,
    )


def _freeze_unreached(view: nn.Module, sample: tuple[Tensor, ...]) -> list[nn.Parameter]:
    """Freeze (and return) the parameters the training loss does not reach.

    A model family may carry parameters its graph does not use: the dual-stage classifier
    keeps its stage-one heads beside the meta-classifier that classifies. Opacus refuses a
    step while a trainable parameter has no per-sample gradient, so these are frozen for the
    round (their delta is zero) and given back to the caller unfrozen. Found by one forward
    and backward pass on one case, with the random state restored, so the round's own
    random draws are the same as without it.
    """
    images, masks, labels = (t[None] for t in sample)
    params = [p for p in view.parameters() if p.requires_grad]
    with torch.random.fork_rng(devices=[]):
        seg_logits, cls_logits = view(images)
        loss = dice_bce_loss(seg_logits, masks) + F.cross_entropy(cls_logits, labels)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    frozen = [p for p, g in zip(params, grads, strict=True) if g is None]
    for param in frozen:
        param.requires_grad_(False)
    return frozen


def _empty_per_sample_gradients(view: nn.Module) -> None:
    """Zero per-sample gradients of an empty batch (shape (0, *param)) on every trainable
    parameter: no backward pass runs for an empty batch, and Opacus refuses a step whose
    parameters have no per-sample gradient at all ("Per sample gradient is not
    initialized"). With them it clips nothing, adds its noise and counts the step, which is
    what Poisson-sampled DP-SGD prescribes for an empty batch."""
    for param in view.parameters():
        if param.requires_grad:
            param.grad_sample = torch.zeros((0, *param.shape), dtype=param.dtype)  # type: ignore[attr-defined]


def _no_inplace_activations(net: nn.Module) -> None:
    # Opacus's backward hooks see each layer's output; an in-place activation after it
    # rewrites that view and autograd refuses it. Same values, one extra tensor per layer.
    for module in net.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False  # type: ignore[assignment]


def _proximal_step(net: nn.Module, anchors: Sequence[Tensor], step: float) -> None:
    with torch.no_grad():
        params = dict(net.named_parameters())
        for (name, value), anchor in zip(net.state_dict().items(), anchors, strict=True):
            if name in params:
                params[name].sub_(step * (value - anchor))
