"""torch backend: the graph of the bundle's ``model.onnx`` rebuilt in torch, FP16 on CUDA.

For GPU machines where torch has CUDA but neither TensorRT nor ONNX Runtime GPU is
installed. The module is `trainer.graph.load_bundle_graph`'s: the network from the
bundle's ``weights.safetensors`` (every family `trainer.weights` builds: one MAU-Net or a
fold ensemble, the ResNet or the dual-stage classifier) and the out-of-distribution head
and calibration temperature from its ``heads.safetensors`` (`appliance.runtime.variants`).
So it returns what ``model.onnx`` returns, 3 outputs or 4 (``ood_score``, and a fold
ensemble's ``seg_uncertainty``), with the class probabilities temperature-scaled as in the
graph; a bundle without both files, or whose files do not rebuild the manifest's outputs,
is refused (`trainer.graph.HeadsError`). No file is unpickled: safetensors only.

On CUDA the network runs in half precision (GroupNorm statistics and the softmax still
accumulate in float32 inside their kernels), channels-last, under ``torch.inference_mode``.
The OOD head runs in float32 on the network's (FP16) features: its precision matrices have
entries far beyond FP16's range (65504) for features of small variance, and the quadratic
form sums D x D products of both signs that largely cancel, which FP16's 11-bit mantissa
cannot resolve; in float32 (as in ``model.onnx``) the score differs from FP32's only by
what the FP16 features themselves differ. Measured with the shipped bundle's widths (heads
fitted on synthetic arrays, torch's CPU FP16 kernels standing in for CUDA's): an all-FP16
head gives NaN, the float32 head differs from the FP32 graph by up to 0.05 on scores of
1 to 3 (the flag's threshold about 1.9). With ``compile`` the module goes through
``torch.compile`` (Inductor), which fuses the attention blocks' element-wise chains.
Batches are padded up to a power of two so that the compiled graph is specialised to a
handful of shapes instead of one per batch size. On the CPU (for tests and benchmarks) it
runs FP32 eager unless compiling is asked for.

``torch.compile`` compiles on first use, not when it is called: a compiler that fails
(no Triton, an unsupported GPU, a compiler bug) would fail the first job, and every one
after it. `TorchBackend.warm_up`, which the factory runs before it selects the backend,
therefore runs every padded batch size once; if compiling fails, the backend says so in
the log and in `device` and runs the eager model instead.

The tensors are the bundle's verified bytes (`Bundle.data`). torch is imported lazily: the
node itself does not need it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from appliance.bundle import Bundle
from appliance.errors import BackendError
from appliance.runtime.base import OOD_OUTPUT, UNCERTAINTY_OUTPUT, ModelOutputs

log = logging.getLogger("fame_node.runtime")

TorchPrecision = Literal["fp16", "fp32"]


def load_torch_model(bundle: Bundle) -> Any:
    """The graph of `bundle`'s ``model.onnx`` as a torch module (eval, CPU, FP32):
    `trainer.graph.load_bundle_graph`. Raises its `BundleError`s (what is missing or does
    not fit, and what to do)."""
    from trainer.graph import load_bundle_graph

    return load_bundle_graph(bundle)


def _float32_inputs(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook of the OOD head: its (list of) feature tensors in float32."""
    return tuple([t.float() for t in a] if isinstance(a, list) else a.float() for a in args)


def in_precision(model: Any, dtype: Any) -> Any:
    """`model` (a `load_torch_model` module in float32) with its network in `dtype` and its
    OOD head kept in float32 (see the module docstring): the head's buffers are never
    rounded to `dtype`, its inputs are cast up. Returns `model`, changed in place."""
    model.net.to(dtype)
    model.ood_head.register_forward_pre_hook(_float32_inputs)
    return model


def nvidia_device_present(dev: Path = Path("/dev")) -> bool:
    """Whether the kernel shows an NVIDIA GPU (`/dev/nvidia0`, ...: the driver's device
    nodes, also inside a container given the GPU)."""
    return any(dev.glob("nvidia[0-9]*"))


def cuda_available() -> bool:
    """Whether torch can run on a CUDA device. Without an NVIDIA device node it answers
    False without importing torch: on a CPU node the import alone would keep about 250
    MiB of the service's memory for a backend it cannot use."""
    if not nvidia_device_present():
        return False
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
    """The graph of a verified bundle's ``model.onnx`` in torch (FP16 + compiled on CUDA).

    `bundle` must carry ``weights.safetensors`` and ``heads.safetensors``. `compile`
    compiles on CUDA, and on the CPU too when `compiler` is given (``torch.compile``'s
    ``backend``: a name or a callable); call `warm_up` before use so that compiling
    happens, or fails, now. `output_names` are the module's outputs, the manifest's.

    Raises
    ------
    BackendError
        no CUDA device for a CUDA backend, or FP16 asked for on the CPU.
    BundleError
        the bundle's files cannot rebuild its graph (`trainer.graph.HeadsError`,
        `trainer.weights.WeightsError`).
    """

    name = "torch"

    def __init__(
        self,
        bundle: Bundle,
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
        model = load_torch_model(bundle).to(self._device)
        self.output_names: tuple[str, ...] = tuple(model.output_names)
        model = in_precision(model, self._dtype)
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
        parts: dict[str, list[NDArray[np.float32]]] = {k: [] for k in self.output_names}
        with self._lock, torch.inference_mode():
            for start in range(0, n, self.max_batch):
                chunk = batch[start : start + self.max_batch]
                size = padded_batch(len(chunk), self.max_batch) if self.compiled else len(chunk)
                x = torch.zeros((size, *chunk.shape[1:]), dtype=self._dtype, device=self._device)
                x[: len(chunk)] = torch.from_numpy(np.ascontiguousarray(chunk)).to(self._device)
                if self._device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                for name, t in zip(self.output_names, self._model(x), strict=True):
                    parts[name].append(t[: len(chunk)].float().cpu().numpy())

        def output(name: str) -> NDArray[np.float32] | None:
            got = parts.get(name)
            return np.concatenate(got).astype(np.float32, copy=False) if got else None

        lesion, cls = output("lesion_prob"), output("class_prob")
        if lesion is None or cls is None:
            raise BackendError(f"the torch graph returned {list(parts)}, without lesion_prob")
        return ModelOutputs(
            lesion_prob=lesion[:, 0],
            class_prob=cls,
            ood_score=output(OOD_OUTPUT),
            seg_uncertainty=output(UNCERTAINTY_OUTPUT),
        )
