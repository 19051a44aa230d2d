"""Where a training run computes: the CPU, or a CUDA GPU when one is asked for and present.

Only the training steps and the val passes run on the device. The data, the augmentation
(drawn from the run's CPU generator, so the same seed gives the same batches on either
device), the checkpoints (saved and loaded on the CPU) and every model a stage returns stay
on the CPU, so calibration, the out-of-distribution heads and the export run exactly as
they do on a machine without a GPU. A run may resume on another device than the one it
started on; it is seeded and reproducible on one device, not bit-identical across them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

DEVICES = ("cpu", "cuda", "auto")


class DeviceError(ValueError):
    """A device that cannot be used here, with what to do instead."""


def resolve(name: str) -> torch.device:
    """The torch device of a `TrainConfig.device` value.

    ``cpu``: the CPU. ``cuda`` (or ``cuda:N``): that GPU, or `DeviceError` when torch sees
    none (a CPU build of torch, no driver, or no such index). ``auto``: the first GPU when
    torch sees one, else the CPU.
    """
    if name == "cpu":
        return torch.device("cpu")
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if name != "cuda" and not name.startswith("cuda:"):
        raise DeviceError(f"device {name!r}: expected one of {DEVICES} (or cuda:N)")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"device {name!r}: torch {torch.__version__} sees no CUDA GPU on this machine "
            "(a CPU build of torch, or no driver); train with --device cpu, or --device auto "
            "to use a GPU only where there is one"
        )
    index = torch.device(name).index or 0
    if index >= torch.cuda.device_count():
        raise DeviceError(
            f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
            f"numbered from 0"
        )
    return torch.device(name)


def describe(device: torch.device) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H200)``: for logs and the bundle's training record."""
    if device.type != "cuda":
        return str(device)
    index = device.index or 0
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def model_device(model: nn.Module) -> torch.device:
    """The device of `model`'s parameters (the CPU for a model without any)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def rng_state(device: torch.device) -> dict[str, Any]:
    """The random state dropout draws from on `device`, for a stage checkpoint: the CPU
    generator always, the GPU's too when training there."""
    state: dict[str, Any] = {"torch_rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(saved: dict[str, Any], device: torch.device) -> None:
    """Set the state `rng_state` saved; a GPU state is only restored on a GPU (a run that
    moves from a GPU to the CPU draws its dropout from the CPU generator from then on)."""
    torch.set_rng_state(saved["torch_rng"])
    if device.type == "cuda" and "cuda_rng" in saved:
        torch.cuda.set_rng_state(saved["cuda_rng"], device)


def to(tensor: Tensor, device: torch.device) -> Tensor:
    """`tensor` on `device` (itself when it is there already)."""
    return tensor.to(device, non_blocking=device.type == "cuda")


__all__ = [
    "DEVICES",
    "DeviceError",
    "describe",
    "model_device",
    "resolve",
    "restore_rng",
    "rng_state",
    "to",
]
