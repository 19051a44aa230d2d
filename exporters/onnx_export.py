"""torch -> ONNX export with a parity check against the eager model.

`export_onnx` traces a model with a dynamic batch axis, checks the graph with
``onnx.checker``, then runs it with ONNX Runtime (CPU) at batch 1 and 3 on random and on
real-looking inputs and compares every output with the eager model. A difference above the
tolerance raises `ParityError`: a bundle whose ONNX graph does not compute what was
trained and validated must never ship.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn

from exporters.group_norm import register as register_group_norm
from trainer.models.combined import INPUT_NAME, OUTPUT_NAMES

PARITY_TOLERANCE = 1e-4
PARITY_BATCHES = (1, 3)


class ExportError(RuntimeError):
    """The model could not be exported or the exported graph is invalid."""


class ParityError(ExportError):
    """ONNX Runtime's outputs differ from the eager model's by more than the tolerance."""

    def __init__(self, output: str, batch: int, max_abs_diff: float, tolerance: float) -> None:
        self.output = output
        self.batch = batch
        self.max_abs_diff = max_abs_diff
        self.tolerance = tolerance
        super().__init__(
            f"ONNX parity check failed: output {output!r} at batch {batch} differs from the "
            f"eager model by up to {max_abs_diff:.3g} (tolerance {tolerance:.0e}). The graph "
            "does not reproduce the trained model; check for ops that trace differently "
            "(data-dependent control flow, train-mode layers) before shipping it."
        )


@dataclass(frozen=True)
class ExportReport:
    """What `export_onnx` wrote and measured."""

    path: Path
    opset: int
    size: int
    bytes: int
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # per output, over all checks
    batches: tuple[int, ...] = PARITY_BATCHES

    def __str__(self) -> str:
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in self.max_abs_diff.items())
        return (
            f"{self.path} ({self.bytes / 1e6:.1f} MB, opset {self.opset}, input {self.size}x"
            f"{self.size}); parity at batch {list(self.batches)}: max |diff| {diffs}"
        )


def _outputs(model: nn.Module, x: Tensor) -> list[np.ndarray]:
    with torch.no_grad():
        out = model(x)
    tensors = list(out) if isinstance(out, tuple | list) else [out]
    return [t.detach().cpu().numpy() for t in tensors]


def export_onnx(
    model: nn.Module,
    path: Path,
    size: int,
    *,
    opset: int = 17,
    in_channels: int = 1,
    input_name: str = INPUT_NAME,
    output_names: Sequence[str] = OUTPUT_NAMES,
    real_inputs: Tensor | None = None,
    tolerance: float = PARITY_TOLERANCE,
) -> ExportReport:
    """Export `model` (eval mode) to `path` and check it against the eager model.

    Parameters
    ----------
    model:
        Takes one (N, in_channels, size, size) float tensor and returns a tensor or a tuple
        of tensors, named by `output_names`.
    real_inputs:
        Optional (M, in_channels, size, size) preprocessed frames, checked in addition to
        random inputs (the first 1 and 3 of them).

    Raises
    ------
    ExportError
        the export or ``onnx.checker`` fails.
    ParityError
        an output differs from the eager model's by more than `tolerance`.
    """
    model = model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(2, in_channels, size, size)
    n_out = len(_outputs(model, example))
    if n_out != len(output_names):
        raise ExportError(
            f"the model returns {n_out} outputs but {len(output_names)} names were given "
            f"({list(output_names)})"
        )
    dynamic = {name: {0: "batch"} for name in (input_name, *output_names)}
    register_group_norm()  # GroupNorm as exact two-pass arithmetic (exporters.group_norm)
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter warns about its own deprecation and about Python
            # shape checks becoming constants; spatial shapes are static here by design.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=[input_name],
                output_names=list(output_names),
                dynamic_axes=dynamic,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    except Exception as exc:  # the exporter raises many unrelated types
        raise ExportError(f"exporting {type(model).__name__} to {path} failed: {exc}") from exc
    diffs = check_parity(model, path, size, in_channels, output_names, real_inputs, tolerance)
    return ExportReport(
        path=path, opset=opset, size=size, bytes=path.stat().st_size, max_abs_diff=diffs
    )


def check_parity(
    model: nn.Module,
    path: Path,
    size: int,
    in_channels: int,
    output_names: Sequence[str],
    real_inputs: Tensor | None = None,
    tolerance: float = PARITY_TOLERANCE,
) -> dict[str, float]:
    """Max |ONNX Runtime - eager| / max(1, |eager|) per output over random and real inputs
    at batch 1 and 3 (absolute for probabilities, relative for larger scores)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    session = ort.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    generator = torch.Generator().manual_seed(0)
    inputs: list[Tensor] = []
    for batch in PARITY_BATCHES:
        inputs.append(torch.randn(batch, in_channels, size, size, generator=generator))
        if real_inputs is not None and len(real_inputs) >= batch:
            inputs.append(real_inputs[:batch].float())
    worst = dict.fromkeys(output_names, 0.0)
    for x in inputs:
        eager = _outputs(model, x)
        got = session.run(list(output_names), {session.get_inputs()[0].name: x.numpy()})
        for name, e, g in zip(output_names, eager, got, strict=True):
            if e.shape != g.shape:
                raise ParityError(name, x.shape[0], float("inf"), tolerance)
            # Absolute for values up to 1 (the probabilities), relative above (scores such
            # as the out-of-distribution distance, which float32 carries to ~1e-7 relative).
            err = np.abs(e - g) / np.maximum(1.0, np.abs(e))
            diff = float(np.max(err)) if e.size else 0.0
            if diff > tolerance:
                raise ParityError(name, int(x.shape[0]), diff, tolerance)
            worst[name] = max(worst[name], diff)
    return worst
