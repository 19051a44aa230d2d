"""torch backend: the eager model rebuilt from the bundle's ``model.pt``, FP16 on CUDA.

For GPU machines where torch has CUDA but neither TensorRT nor ONNX Runtime GPU is
installed. The bundle must carry ``model.pt`` (`appliance.runtime.variants`; written by
``fame-node export onnx --checkpoint``, which checks it computes the bundle's
``model.onnx``); without it the backend is not available.

On CUDA the model runs in half precision (GroupNorm statistics and the softmax still
accumulate in float32 inside their kernels), channels-last, under ``torch.inference_mode``;
with ``compile`` it goes through ``torch.compile`` (Inductor), which fuses the attention
blocks' element-wise chains. Batches are padded up to a power of two so that the compiled
graph is specialised to a handful of shapes instead of one per batch size. On the CPU (for
tests and benchmarks) it runs FP32 eager unless compiling is asked for.

``torch.compile`` compiles on first use, not when it is called: a compiler that fails
(no Triton, an unsupported GPU, a compiler bug) would fail the first job, and every one
after it. `TorchBackend.warm_up`, which the factory runs before it selects the backend,
therefore runs every padded batch size once; if compiling fails, the backend says so in
the log and in `device` and runs the eager model instead.

The weights are the bundle's verified bytes (``torch.load`` with ``weights_only``, from
memory). torch is imported lazily: the node itself does not need it.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from appliance.errors import BackendError
from appliance.runtime.base import ModelOutputs
from appliance.runtime.variants import TORCH_FORMAT

log = logging.getLogger("fame_node.runtime")

TorchPrecision = Literal["fp16", "fp32"]


def load_torch_model(weights: bytes, label: str = "model.pt") -> Any:
    """`FameNodeNet` (eval mode, on the CPU) from the bytes of a ``model.pt`` of
    `TORCH_FORMAT`; `label` names the file in messages."""
    import torch

    from trainer.models import FameNodeNet, LesionClassifier, MAUNet

    try:
        payload = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle / runtime errors of many kinds
        raise BackendError(f"cannot read torch weights {label}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != TORCH_FORMAT:
        raise BackendError(
            f"{label} is not a FAME Node torch weights file (format {TORCH_FORMAT!r}); write "
            "it with `fame-node export onnx --bundle DIR --checkpoint CKPT`"
        )
    arch = payload["architecture"]
    try:
        seg = MAUNet(**arch["segmenter"])
        seg.load_state_dict(payload["segmenter"])
        cls_arch = dict(arch["classifier"])
        cls_arch["widths"] = tuple(cls_arch["widths"])
        cls = LesionClassifier(**cls_arch)
        cls.load_state_dict(payload["classifier"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise BackendError(f"{label}: the weights do not fit the architecture: {exc}") from exc
    return FameNodeNet(seg, cls).eval()


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def padded_batch(n: int, max_batch: int) -> int:
    """The batch a request of `n` frames is padded to: the next power of two, capped."""
    if n < 1:
        raise ValueError(f"batch must have at least one frame, got {n}")
    size = 1
    while size < n:
        size *= 2
    return max(n, min(size, max_batch))


class TorchBackend:
    """The bundle's eager model in torch (FP16 + compiled on CUDA).

    `weights` are the verified bytes of ``model.pt``. `compile` compiles on CUDA, and on
    the CPU too when `compiler` is given (``torch.compile``'s ``backend``: a name or a
    callable); call `warm_up` before use so that compiling happens, or fails, now."""

    name = "torch"

    def __init__(
        self,
        weights: bytes,
        *,
        device: str = "cuda",
        precision: TorchPrecision = "fp16",
        compile: bool = True,
        max_batch: int = 8,
        compiler: str | Callable[..., Any] | None = None,
    ) -> None:
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError("torch has no CUDA device here (torch.cuda.is_available() is False)")
        if precision == "fp16" and not device.startswith("cuda"):
            raise BackendError("FP16 torch inference needs CUDA; use precision 'fp32' on the CPU")
        self._torch = torch
        self._device = torch.device(device)
        self._dtype = torch.float16 if precision == "fp16" else torch.float32
        self.precision = precision
        self.max_batch = max_batch
        model = load_torch_model(weights).to(self._device, self._dtype)
        if self._device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.compiled = False
        self.compile_failure: str | None = None
        self._eager: Any = model
        self._model: Any = model
        if compile and (self._device.type == "cuda" or compiler is not None):
            try:
                self._model = torch.compile(model, dynamic=False, backend=compiler or "inductor")
                self.compiled = True
            except Exception as exc:  # no Triton compiler, unsupported GPU: run eager
                self._fall_back(exc)
        self._lock = threading.Lock()  # one stream; the micro-batcher merges callers anyway
        self._label = (
            torch.cuda.get_device_name(self._device) if self._device.type == "cuda" else "CPU"
        )

    @property
    def device(self) -> str:
        torch = self._torch
        mode = "compiled" if self.compiled else "eager"
        if self.compile_failure:
            mode += f" (torch.compile failed: {self.compile_failure})"
        return f"torch {torch.__version__} {self.precision.upper()} {mode} on {self._label}"

    def _fall_back(self, exc: BaseException) -> None:
        self.compile_failure = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        self._model = self._eager
        self.compiled = False
        log.warning("torch.compile failed (%s); the torch backend runs the eager model", exc)

    def warm_up(self, dims: tuple[int, ...]) -> None:
        """Run every batch shape the backend will use once, so that ``torch.compile``
        compiles now; a compiler failure switches to the eager model (said in `device`).

        Raises
        ------
        Exception
            whatever the *eager* model raises on a zero batch: the backend cannot run.
        """
        sizes = sorted({padded_batch(n, self.max_batch) for n in range(1, self.max_batch + 1)})
        if self.compiled:
            try:
                for size in sizes:
                    self.infer(np.zeros((size, *dims), np.float32))
                return
            except Exception as exc:  # Dynamo / Inductor / Triton raise many kinds
                self._fall_back(exc)
        self.infer(np.zeros((1, *dims), np.float32))

    def infer(self, batch: NDArray[np.float32]) -> ModelOutputs:
        if batch.ndim != 4 or batch.shape[1] != 1:
            raise ValueError(f"expected a batch of shape (N, 1, S, S), got {batch.shape}")
        torch = self._torch
        n = int(batch.shape[0])
        lesions: list[NDArray[np.float32]] = []
        classes: list[NDArray[np.float32]] = []
        oods: list[NDArray[np.float32]] = []
        uncertainties: list[NDArray[np.float32]] = []
        with self._lock, torch.inference_mode():
            for start in range(0, n, self.max_batch):
                chunk = batch[start : start + self.max_batch]
                size = padded_batch(len(chunk), self.max_batch) if self.compiled else len(chunk)
                x = torch.zeros((size, *chunk.shape[1:]), dtype=self._dtype, device=self._device)
                x[: len(chunk)] = torch.from_numpy(np.ascontiguousarray(chunk)).to(self._device)
                if self._device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                got = self._model(x)
                lesions.append(got[0][: len(chunk), 0].float().cpu().numpy())
                classes.append(got[1][: len(chunk)].float().cpu().numpy())
                if len(got) > 2:  # a model with the out-of-distribution score
                    oods.append(got[2][: len(chunk)].float().cpu().numpy())
                if len(got) > 3:  # and a fold ensemble's disagreement
                    uncertainties.append(got[3][: len(chunk)].float().cpu().numpy())
        return ModelOutputs(
            lesion_prob=np.concatenate(lesions).astype(np.float32, copy=False),
            class_prob=np.concatenate(classes).astype(np.float32, copy=False),
            ood_score=np.concatenate(oods).astype(np.float32, copy=False) if oods else None,
            seg_uncertainty=(
                np.concatenate(uncertainties).astype(np.float32, copy=False)
                if uncertainties
                else None
            ),
        )
