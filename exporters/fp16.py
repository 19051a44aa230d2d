"""FP32 ONNX -> FP16 ONNX whose inputs and outputs stay FP32.

The FP16 variant of a bundle's model is what GPUs run fastest: TensorRT 11 builds strongly
typed networks, which take their precision from the ONNX types rather than from a builder
flag, and ONNX Runtime CUDA runs FP16 kernels on the tensor cores. The node's interface does
not change: the graph still takes and returns float32, with a ``Cast`` after each input and
before each output, so every backend feeds it the same arrays.

`convert_to_fp16` is a pure function over `onnx.ModelProto`:

- float32 initializers and ``Constant`` / ``ConstantOfShape`` values become float16, as do
  ``Cast(to=FLOAT)`` nodes and every float32 tensor type the graph declares;
- operator inputs that the ONNX spec requires to be float32 whatever the data type (the
  ``scales`` and ``roi`` of ``Resize``, the ``scales`` of ``Upsample``) stay float32, and a
  computed tensor feeding one gets a ``Cast`` back to float32 in front of it;
- nodes whose type is in `keep_fp32` run in float32 between casts (for ops that lose too
  much in half precision, or that a runtime has no FP16 kernel for), and so do the nodes
  whose name contains an entry of `keep_fp32` that begins with ``/`` (a module scope of the
  torch export: ``/ood_head``, ``/ood_stats``). Such nodes form a float32 region: a kept
  node reads another kept node's float32 output directly, so a chain of them (the
  out-of-distribution head's difference, precision product and sum) never rounds through
  float16; only what leaves the region is cast down, and a graph output computed in it is
  written in float32. Its constants stay float32 (the head's precision matrices hold values
  beyond float16's 65504).

`check_fp16` then runs both graphs with ONNX Runtime (CPU) on the same inputs and raises
`Fp16ToleranceError` when an output moves by more than the tolerance: FP16 trades a little
precision for speed, never a different diagnosis.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Inputs (by position) that must be float32 whatever the graph's float type.
FP32_INPUT_SLOTS: dict[str, tuple[int, ...]] = {"Resize": (1, 2), "Upsample": (1,)}
# Ops whose outputs' type comes from an attribute, not from their inputs; handled below.
_TYPED_BY_ATTRIBUTE = {"Cast", "Constant", "ConstantOfShape"}
_UNSUPPORTED = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "EyeLike"}
# The out-of-distribution score stays float32: its head (`trainer.ood`, ``ood_head``) and
# the MAU-Net's activation statistics it reads (``MAUNet.ood_stats``), and the layer probe's
# lesion means (``FameNodeNet.lesion_means``: weighted sums over the image).
DEFAULT_KEEP_FP32: tuple[str, ...] = ("/ood_head", "/ood_stats", "/lesion_means")
FP16_TOLERANCE = 2e-2  # on probabilities in [0, 1]; relative on values beyond 1
FP16_SUFFIX = ".fp16.onnx"


class Fp16Error(RuntimeError):
    """Base: the FP16 variant cannot be made or does not compute what the FP32 graph does.

    Not an `exporters.onnx_export.ExportError` on purpose: that module imports torch, and
    this one must work on a node without it (an FP16 ONNX for TensorRT 11 can be made there).
    """


class Fp16ConversionError(Fp16Error):
    """The graph cannot be converted to FP16 (an op whose output type is fixed, say)."""


class Fp16ToleranceError(Fp16Error):
    """The FP16 graph's outputs differ from the FP32 graph's by more than the tolerance."""

    def __init__(self, output: str, max_abs_diff: float, tolerance: float) -> None:
        self.output = output
        self.max_abs_diff = max_abs_diff
        self.tolerance = tolerance
        super().__init__(
            f"FP16 check failed: output {output!r} differs from the FP32 graph by up to "
            f"{max_abs_diff:.3g} (tolerance {tolerance:.0e}; relative where the FP32 value is "
            "beyond 1). Keep the ops that lose precision "
            "in FP32 (keep_fp32=('ReduceMean', ...): op types or node name prefixes) or ship the "
            "FP32 model only."
        )


@dataclass(frozen=True)
class Fp16Report:
    """What `export_fp16` wrote and measured."""

    path: Path
    bytes: int
    kept_fp32: tuple[str, ...]
    max_abs_diff: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in self.max_abs_diff.items())
        size = f"{self.bytes / 1e6:.1f} MB"
        return f"{self.path} ({size}, FP16, FP32 I/O); max |diff| vs FP32: {diffs}"


def fp16_path(model_path: Path) -> Path:
    """``model.onnx`` -> ``model.fp16.onnx`` (next to it)."""
    return model_path.with_name(model_path.name.removesuffix(".onnx") + FP16_SUFFIX)


def convert_to_fp16(
    model: onnx.ModelProto, *, keep_fp32: Iterable[str] = DEFAULT_KEEP_FP32
) -> onnx.ModelProto:
    """A float16 copy of `model` whose graph inputs and outputs stay float32.

    Parameters
    ----------
    model:
        A float32 model (not changed).
    keep_fp32:
        Op types to run in float32 (between casts).

    Raises
    ------
    Fp16ConversionError
        the graph has subgraphs (If / Loop / Scan) or ops whose output type cannot be
        changed safely (random generators, EyeLike).
    """
    kept = _kept_predicate(keep_fp32)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    subgraph = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    for node in graph.node:
        if any(a.type in subgraph for a in node.attribute):
            raise Fp16ConversionError(
                f"node {node.name or node.op_type} ({node.op_type}) has a subgraph; FP16 "
                "conversion supports flat graphs only"
            )
        if node.op_type in _UNSUPPORTED:
            raise Fp16ConversionError(
                f"node {node.name or node.op_type}: {node.op_type} fixes its output type by "
                "attribute and is not converted; export the model without it"
            )
    float_inputs = {v.name for v in graph.input if _is_float(v)}
    float_outputs = {v.name for v in graph.output if _is_float(v)}
    is_float = _float_tensors(model)
    # Constants read only at FP32 slots (or by kept ops) stay FP32; the others become FP16.
    constants = {t.name for t in graph.initializer} | {
        n.output[0] for n in graph.node if n.op_type == "Constant"
    }
    fp32_only = _names_read_only_in_fp32(graph.node, kept) & constants
    for tensor in graph.initializer:
        if tensor.data_type == TensorProto.FLOAT and tensor.name not in fp32_only:
            tensor.CopyFrom(_to_fp16_tensor(tensor))

    new_nodes: list[onnx.NodeProto] = []
    renamed: dict[str, str] = {}  # graph input name -> its FP16 copy
    for name in sorted(float_inputs):
        fp16_name = f"{name}__fp16"
        new_nodes.append(
            helper.make_node(
                "Cast", [name], [fp16_name], to=TensorProto.FLOAT16, name=f"{name}__to_fp16"
            )
        )
        renamed[name] = fp16_name
    out_renamed = {name: f"{name}__fp16" for name in float_outputs}
    is_float |= set(renamed.values()) | set(out_renamed.values())
    counter = 0
    region: dict[str, str] = {}  # FP16 name -> FP32 name of a kept node's float output
    graph_output = {fp16: name for name, fp16 in out_renamed.items()}
    direct: set[str] = set()  # graph outputs a kept node writes in FP32 itself
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
            elif name in out_renamed:  # a graph output also read inside the graph
                node.input[i] = out_renamed[name]
        for i, name in enumerate(node.output):
            if name in out_renamed:
                node.output[i] = out_renamed[name]
        keep_node = kept(node)
        if node.op_type == "Cast" and _attr(node, "to") == TensorProto.FLOAT:
            if not keep_node:
                _set_attr_int(node, "to", TensorProto.FLOAT16)
        elif node.op_type in ("Constant", "ConstantOfShape"):
            _constant_to_fp16(node, keep_fp32=node.output[0] in fp32_only)
        if keep_node:
            # Run in FP32: read kept producers' FP32 outputs as they are, cast other float
            # inputs up; keep the FP32 output for kept readers and cast a copy down.
            for i, name in enumerate(node.input):
                if name in region:
                    node.input[i] = region[name]
                elif name in is_float and name not in fp32_only:
                    up = f"{name}__fp32_{counter}"
                    counter += 1
                    new_nodes.append(
                        helper.make_node("Cast", [name], [up], to=TensorProto.FLOAT, name=up)
                    )
                    node.input[i] = up
            new_nodes.append(node)
            for i, name in enumerate(list(node.output)):
                if name not in is_float:
                    continue
                # A graph output computed here is written in FP32 as it is, never rounded.
                low = graph_output.get(name, f"{name}__fp32out")
                if name in graph_output:
                    direct.add(low)
                node.output[i] = low
                region[name] = low
                new_nodes.append(
                    helper.make_node(
                        "Cast", [low], [name], to=TensorProto.FLOAT16, name=f"{name}__to_fp16"
                    )
                )
            continue
        for slot in FP32_INPUT_SLOTS.get(node.op_type, ()):
            if slot < len(node.input) and node.input[slot]:
                name = node.input[slot]
                if name not in is_float or name in fp32_only:
                    continue  # not a float, or stayed FP32 above
                up = f"{name}__fp32_{counter}"
                counter += 1
                new_nodes.append(
                    helper.make_node("Cast", [name], [up], to=TensorProto.FLOAT, name=up)
                )
                node.input[slot] = up
        new_nodes.append(node)
    for name, fp16_name in out_renamed.items():
        if name in direct:
            continue
        new_nodes.append(
            helper.make_node(
                "Cast", [fp16_name], [name], to=TensorProto.FLOAT, name=f"{name}__to_fp32"
            )
        )
    del graph.node[:]
    graph.node.extend(new_nodes)
    # Declared intermediate types would contradict the new graph; runtimes infer their own.
    del graph.value_info[:]
    try:
        onnx.shape_inference.infer_shapes(out, strict_mode=True)  # raises if types clash
    except onnx.shape_inference.InferenceError as exc:
        raise Fp16ConversionError(f"the FP16 graph does not type-check: {exc}") from exc
    return out


def export_fp16(
    fp32_path: Path,
    out_path: Path | None = None,
    *,
    keep_fp32: Iterable[str] = DEFAULT_KEEP_FP32,
    inputs: Sequence[np.ndarray] | None = None,
    tolerance: float = FP16_TOLERANCE,
) -> Fp16Report:
    """Write the FP16 variant of the ONNX model at `fp32_path` and check it.

    The result is checked with ``onnx.checker`` and against the FP32 graph through ONNX
    Runtime (CPU) on `inputs` (default: random batches of 1 and 3 in the input's shape).

    Raises
    ------
    Fp16ConversionError
        the graph cannot be converted, or the converted one does not pass the checker.
    Fp16ToleranceError
        an output moved by more than `tolerance`.
    """
    out_path = out_path or fp16_path(fp32_path)
    keep = tuple(keep_fp32)
    model = onnx.load(str(fp32_path))
    converted = convert_to_fp16(model, keep_fp32=keep)
    try:
        onnx.checker.check_model(converted, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise Fp16ConversionError(f"the FP16 graph of {fp32_path} is invalid: {exc}") from exc
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    onnx.save(converted, str(tmp))
    tmp.replace(out_path)
    diffs = check_fp16(fp32_path, out_path, inputs=inputs, tolerance=tolerance)
    return Fp16Report(
        path=out_path, bytes=out_path.stat().st_size, kept_fp32=keep, max_abs_diff=diffs
    )


def fp16_bytes(
    fp32: bytes,
    *,
    keep_fp32: Iterable[str] = DEFAULT_KEEP_FP32,
    tolerance: float = FP16_TOLERANCE,
    label: str = "the model",
) -> bytes:
    """The FP16 variant of the (verified) ONNX bytes `fp32`, checked as `export_fp16`
    checks it, in memory: what the node caches for TensorRT 11 (nothing is read back
    from a file before it is recorded).

    Raises
    ------
    Fp16ConversionError, Fp16ToleranceError
        as `export_fp16`.
    """
    converted = convert_to_fp16(onnx.load_from_string(fp32), keep_fp32=tuple(keep_fp32))
    try:
        onnx.checker.check_model(converted, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise Fp16ConversionError(f"the FP16 graph of {label} is invalid: {exc}") from exc
    data = converted.SerializeToString()
    check_fp16(fp32, data, tolerance=tolerance)
    return data


def check_fp16(
    fp32_path: Path | bytes,
    fp16_model_path: Path | bytes,
    *,
    inputs: Sequence[np.ndarray] | None = None,
    tolerance: float = FP16_TOLERANCE,
) -> dict[str, float]:
    """Max |FP16 - FP32| / max(1, |FP32|) per output through ONNX Runtime (CPU): the
    absolute difference on probabilities, the relative one on values beyond 1 (an
    out-of-distribution score of 40 may move by 0.4 where a probability may move by 0.01,
    each at the same tolerance); raises over `tolerance`.

    Each model is a file or the model's bytes."""
    import onnxruntime as ort

    def source(model: Path | bytes) -> str | bytes:
        return model if isinstance(model, bytes) else str(model)

    options = ort.SessionOptions()
    options.log_severity_level = 3
    cpu = ["CPUExecutionProvider"]
    ref = ort.InferenceSession(source(fp32_path), options, providers=cpu)
    half = ort.InferenceSession(source(fp16_model_path), options, providers=cpu)
    meta = ref.get_inputs()[0]
    if inputs is None:
        rng = np.random.default_rng(0)
        dims = [d if isinstance(d, int) else 1 for d in meta.shape[1:]]
        inputs = [rng.standard_normal((b, *dims)).astype(np.float32) for b in (1, 3)]
    names = [o.name for o in ref.get_outputs()]
    worst = dict.fromkeys(names, 0.0)
    for x in inputs:
        expected = ref.run(names, {meta.name: x})
        got = half.run(names, {half.get_inputs()[0].name: x})
        for name, e, g in zip(names, expected, got, strict=True):
            if g.dtype != e.dtype or g.shape != e.shape:
                raise Fp16ToleranceError(name, float("inf"), tolerance)
            ref64 = e.astype(np.float64)
            # Absolute on probabilities; relative on scores beyond 1 (the OOD score).
            scale = np.maximum(1.0, np.abs(ref64))
            diff = float(np.max(np.abs(ref64 - g) / scale)) if e.size else 0.0
            if not diff <= tolerance:  # also catches NaN
                raise Fp16ToleranceError(name, diff, tolerance)
            worst[name] = max(worst[name], diff)
    return worst


# --------------------------------------------------------------------------- helpers


def _is_float(value: onnx.ValueInfoProto) -> bool:
    return value.type.tensor_type.elem_type == TensorProto.FLOAT


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of the float32 tensors of `model` (inputs, initializers, intermediates)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except onnx.shape_inference.InferenceError as exc:
        raise Fp16ConversionError(f"cannot infer the graph's tensor types: {exc}") from exc
    graph = inferred.graph
    names = {t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if _is_float(value):
            names.add(value.name)
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                    names.add(node.output[0])
    return names


def _attr(node: onnx.NodeProto, name: str) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def _set_attr_int(node: onnx.NodeProto, name: str, value: int) -> None:
    for a in node.attribute:
        if a.name == name:
            a.i = value


def _to_fp16_tensor(tensor: onnx.TensorProto) -> onnx.TensorProto:
    array = numpy_helper.to_array(tensor).astype(np.float32)
    if array.size and np.max(np.abs(array)) > np.finfo(np.float16).max:
        raise Fp16ConversionError(
            f"tensor {tensor.name!r} holds values up to {np.max(np.abs(array)):.3g}, beyond "
            f"the FP16 range ({np.finfo(np.float16).max:.0f}); keep its op in FP32"
        )
    return numpy_helper.from_array(array.astype(np.float16), tensor.name)


def _constant_to_fp16(node: onnx.NodeProto, *, keep_fp32: bool) -> None:
    if keep_fp32:
        return
    for a in node.attribute:
        if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
            a.t.CopyFrom(_to_fp16_tensor(a.t))
        elif a.name in ("value_float", "value_floats"):
            raise Fp16ConversionError(
                f"Constant {node.name or node.output[0]} uses {a.name}, which is always "
                "float32; export it as a tensor constant"
            )


def _kept_predicate(keep_fp32: Iterable[str]) -> Callable[[onnx.NodeProto], bool]:
    """Whether a node runs in FP32: its op type is listed, or its name contains a listed
    scope (an entry beginning with ``/``; nested modules' nodes carry their parents' path,
    a module called twice gets ``_1`` after its name)."""
    entries = tuple(keep_fp32)
    types = frozenset(e for e in entries if not e.startswith("/"))
    scopes = tuple(e for e in entries if e.startswith("/"))

    def kept(node: onnx.NodeProto) -> bool:
        return node.op_type in types or any(scope in node.name for scope in scopes)

    return kept


def _names_read_only_in_fp32(
    nodes: Iterable[onnx.NodeProto], kept: Callable[[onnx.NodeProto], bool]
) -> set[str]:
    """Tensors every reader of which needs float32 (FP32 slots, or nodes kept in FP32)."""
    fp32_reads: dict[str, int] = {}
    all_reads: dict[str, int] = {}
    for node in nodes:
        slots = FP32_INPUT_SLOTS.get(node.op_type, ())
        keep_node = kept(node)
        for i, name in enumerate(node.input):
            if not name:
                continue
            all_reads[name] = all_reads.get(name, 0) + 1
            if i in slots or keep_node:
                fp32_reads[name] = fp32_reads.get(name, 0) + 1
    return {name for name, n in fp32_reads.items() if n == all_reads[name]}
