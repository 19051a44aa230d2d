"""ONNX Runtime backend (CUDA or CPU execution provider).

The session is built from the model's verified bytes in memory (`Bundle.data`), never from
a path: nothing is reread after verification, and nothing outside those bytes (external
data, which the bundle verifier refuses anyway) can be pulled in.

ONNX Runtime silently falls back to the CPU when a requested GPU provider cannot be
loaded, so the providers that the session really uses are read back from the session
and reported, never assumed.
"""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from appliance.cpus import usable_cpus
from appliance.errors import BackendError
from appliance.runtime.base import OOD_OUTPUT, UNCERTAINTY_OUTPUT, ModelOutputs

log = logging.getLogger("fame_node.runtime")

LESION_OUTPUT = "lesion_prob"
CLASS_OUTPUT = "class_prob"


class OnnxRuntimeBackend:
    """One ONNX Runtime session over the bundle's combined segmentation + classification model.

    `model` is the ONNX file's verified bytes; `label` names it in messages (e.g. the
    bundle's ``name@version`` and file)."""

    name = "onnxruntime"

    def __init__(
        self,
        model: bytes,
        *,
        label: str,
        providers: list[str],
        intra_op_threads: int = 0,
        spinning: bool = True,
    ) -> None:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # 0: every CPU this process may use, set explicitly. ONNX Runtime's own default
        # pins its threads to cores, which measured ~1.4x slower on a 2-core machine shared
        # with other processes (a pinned thread waits for its busy core).
        self.intra_op_threads = intra_op_threads or usable_cpus()
        opts.intra_op_num_threads = self.intra_op_threads
        if not spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3  # errors only; fallbacks are reported below
        try:
            self._session = ort.InferenceSession(model, opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own, untyped, exception classes
            raise BackendError(f"ONNX Runtime cannot load {label}: {exc}") from exc
        self.requested = list(providers)
        self.active = list(self._session.get_providers())
        if self.requested and self.active[0] != self.requested[0]:
            log.warning(
                "requested ONNX Runtime provider %s is not usable here; running on %s",
                self.requested[0],
                self.active[0],
            )
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise BackendError(f"{label}: expected one input, found {len(inputs)}")
        self._input = inputs[0].name
        outputs = {o.name for o in self._session.get_outputs()}
        missing = {LESION_OUTPUT, CLASS_OUTPUT} - outputs
        if missing:
            raise BackendError(f"{label}: outputs {sorted(missing)} missing (has {outputs})")
        # The out-of-distribution score and the fold ensemble's uncertainty are optional:
        # older bundles, and single-model ones, do not compute them.
        self._names = [LESION_OUTPUT, CLASS_OUTPUT]
        self._names += [n for n in (OOD_OUTPUT, UNCERTAINTY_OUTPUT) if n in outputs]

    @property
    def device(self) -> str:
        return self.active[0]

    def infer(self, batch: NDArray[np.float32]) -> ModelOutputs:
        if batch.ndim != 4 or batch.shape[1] != 1:
            raise ValueError(f"expected a batch of shape (N, 1, S, S), got {batch.shape}")
        run = self._session.run(self._names, {self._input: np.ascontiguousarray(batch)})
        got = {n: np.asarray(v, dtype=np.float32) for n, v in zip(self._names, run, strict=True)}
        return ModelOutputs(
            lesion_prob=got[LESION_OUTPUT][:, 0],
            class_prob=got[CLASS_OUTPUT],
            ood_score=got.get(OOD_OUTPUT),
            seg_uncertainty=got.get(UNCERTAINTY_OUTPUT),
        )
