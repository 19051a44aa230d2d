"""A Triton Inference Server model repository from a bundle, for sites that outgrow one node.

``fame-node export triton --bundle DIR --out REPO`` writes::

    REPO/
      <prefix>_onnx/config.pbtxt        platform onnxruntime_onnx, dynamic batching
      <prefix>_onnx/1/model.onnx
      <prefix>_onnx_fp16/...            the FP16 variant, where the bundle has one
      <prefix>_trt/config.pbtxt         platform tensorrt_plan, where engines were built;
      <prefix>_trt/1/<engine>.plan      one plan per compute capability (cc_model_filenames)
      <prefix>/config.pbtxt             platform ensemble: what clients call
      <prefix>/1/                       (empty; Triton wants the version folder)
      README.md

Every model has ``max_batch_size`` and dynamic batching, and its tensors' dims come from the
manifest without the batch axis. The ensemble exposes the node's input (``image``) and
outputs (``lesion_prob``, ``class_prob``).

**Ensembles.** Today's bundle is one graph holding MAU-Net and the classifier (the node runs
it as one session), so the ensemble has one step, on the TensorRT plan where one was built
and otherwise on the ONNX model. When the segmentation and classification ensembles ship as
separate graphs, `ensemble_config` takes their steps in order: the segmentation model
(``image`` -> ``lesion_prob``) then the classifier (``image`` + ``lesion_prob`` ->
``class_prob``), intermediate tensors named in each step's input / output maps, exactly as
``appliance.analysis`` chains them. The averaging inside each ensemble stays inside its ONNX
graph (one model per ensemble), so Triton needs no Python backend.

TensorRT plans only run on the GPU model and TensorRT version they were built with: build
them on the serving machine (``fame-node export engines``) with the TensorRT of the Triton
release it runs. `parse_pbtxt` reads the protobuf text format back (for tests and checks).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from appliance.bundle import Bundle, TensorSpec
from appliance.runtime.engine_cache import EngineCache
from appliance.runtime.variants import ENGINES_DIR, fp16_model

DEFAULT_PREFIX = "fame_node"
DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64"}
ONNX_PLATFORM = "onnxruntime_onnx"
TRT_PLATFORM = "tensorrt_plan"


class TritonExportError(RuntimeError):
    """The repository cannot be written (bad name, tensor shapes, existing folder)."""


@dataclass(frozen=True)
class Step:
    """One step of an ensemble: model, and its tensors mapped to the ensemble's."""

    model: str
    input_map: dict[str, str]  # model input -> ensemble tensor
    output_map: dict[str, str]  # model output -> ensemble tensor


@dataclass
class RepositoryReport:
    path: Path
    models: list[str] = field(default_factory=list)
    ensemble: str = ""
    ensemble_target: str = ""

    def __str__(self) -> str:
        return (
            f"Triton repository {self.path}: models {', '.join(self.models)}; ensemble "
            f"{self.ensemble!r} runs {self.ensemble_target!r}"
        )


# --------------------------------------------------------------------------- configs


def _dims(spec: TensorSpec) -> list[int]:
    dims = spec.shape[1:]
    if not spec.shape or not isinstance(spec.shape[0], str):
        raise TritonExportError(
            f"tensor {spec.name} has shape {spec.shape}; Triton batching needs a dynamic "
            "first (batch) axis"
        )
    if not all(isinstance(d, int) for d in dims):
        raise TritonExportError(f"tensor {spec.name}: only the batch axis may be dynamic")
    return [int(d) for d in dims]


def _tensor(spec: TensorSpec) -> str:
    if spec.dtype not in DTYPES:
        raise TritonExportError(f"tensor {spec.name}: unsupported dtype {spec.dtype}")
    dims = ", ".join(str(d) for d in _dims(spec))
    return (
        f'  {{\n    name: "{spec.name}"\n    data_type: {DTYPES[spec.dtype]}\n'
        f"    dims: [ {dims} ]\n  }}"
    )


def _io(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> str:
    return (
        "input [\n" + ",\n".join(_tensor(s) for s in inputs) + "\n]\n"
        "output [\n" + ",\n".join(_tensor(s) for s in outputs) + "\n]\n"
    )


def model_config(
    name: str,
    platform: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    max_batch: int,
    queue_delay_us: int = 2000,
    default_filename: str | None = None,
    cc_filenames: dict[str, str] | None = None,
) -> str:
    """``config.pbtxt`` of one ONNX or TensorRT model with dynamic batching."""
    _check_name(name)
    preferred = sorted({b for b in (max_batch // 2, max_batch) if b >= 1})
    text = f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: {max_batch}\n'
    if default_filename:
        text += f'default_model_filename: "{default_filename}"\n'
    for cc, filename in sorted((cc_filenames or {}).items()):
        text += f'cc_model_filenames {{\n  key: "{cc}"\n  value: "{filename}"\n}}\n'
    text += _io(inputs, outputs)
    text += (
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {', '.join(str(b) for b in preferred)} ]\n"
        f"  max_queue_delay_microseconds: {queue_delay_us}\n"
        "}\n"
        "version_policy: { latest: { num_versions: 1 } }\n"
    )
    return text


def ensemble_config(
    name: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    steps: Sequence[Step],
    *,
    max_batch: int,
) -> str:
    """``config.pbtxt`` of an ensemble whose steps run in order (see the module docstring)."""
    _check_name(name)
    if not steps:
        raise TritonExportError("an ensemble needs at least one step")
    produced = {s.name for s in inputs}
    for step in steps:
        missing = set(step.input_map.values()) - produced
        if missing:
            raise TritonExportError(
                f"ensemble step {step.model} reads {sorted(missing)}, which no earlier step "
                "or ensemble input provides"
            )
        produced |= set(step.output_map.values())
    unmade = {s.name for s in outputs} - produced
    if unmade:
        raise TritonExportError(f"no ensemble step produces {sorted(unmade)}")
    text = f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: {max_batch}\n'
    text += _io(inputs, outputs)
    text += "ensemble_scheduling {\n  step [\n"
    parts = []
    for step in steps:
        maps = "".join(
            f'      input_map {{\n        key: "{k}"\n        value: "{v}"\n      }}\n'
            for k, v in step.input_map.items()
        ) + "".join(
            f'      output_map {{\n        key: "{k}"\n        value: "{v}"\n      }}\n'
            for k, v in step.output_map.items()
        )
        parts.append(
            f'    {{\n      model_name: "{step.model}"\n      model_version: -1\n{maps}    }}'
        )
    text += ",\n".join(parts) + "\n  ]\n}\n"
    return text


def _check_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise TritonExportError(f"Triton model name {name!r}: use letters, digits, _ . - only")


# --------------------------------------------------------------------------- repository


Engine = tuple[str, bytes]  # file name, verified bytes


def bundle_engines(bundle: Bundle, caches: Sequence[EngineCache] = ()) -> list[Engine]:
    """The TensorRT plans for this bundle's model, as verified bytes: listed in the bundle
    (checked with it), or in an engine cache with the record the node wrote when it built
    them (`EngineCache.recorded`); a plan without such a record is left out."""
    sha = bundle.manifest.files[bundle.manifest.model_file]
    found: list[Engine] = [
        (rel.split("/", 1)[1], bundle.data(rel))
        for rel in bundle.manifest.files
        if rel.startswith(f"{ENGINES_DIR}/") and rel.endswith(".plan")
    ]
    for cache in caches:
        found += cache.recorded("tensorrt-plan", sha)
    return [(name, data) for name, data in found if name.startswith(sha[:16])]


def _cc_of(plan: str) -> str | None:
    """``..._sm90_...`` in an engine file name -> "9.0"."""
    match = re.search(r"_sm(\d+?)(\d)_", plan)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def write_triton_repository(
    bundle: Bundle,
    out: Path,
    *,
    prefix: str = DEFAULT_PREFIX,
    max_batch: int = 8,
    queue_delay_us: int = 2000,
    engines: Sequence[Engine] = (),
    overwrite: bool = False,
) -> RepositoryReport:
    """Write the repository for `bundle` to `out` (see the module docstring)."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise TritonExportError(f"{out} exists and is not empty; pass overwrite=True")
        shutil.rmtree(out)
    m = bundle.manifest
    report = RepositoryReport(path=out)

    def add(name: str, platform: str, files: dict[str, bytes], **kw: object) -> None:
        folder = out / name / "1"
        folder.mkdir(parents=True, exist_ok=True)
        for rel, data in files.items():
            (folder / rel).write_bytes(data)
        text = model_config(
            name, platform, m.inputs, m.outputs, max_batch=max_batch,
            queue_delay_us=queue_delay_us, **kw,  # type: ignore[arg-type]
        )  # fmt: skip
        (out / name / "config.pbtxt").write_text(text, encoding="utf-8")
        report.models.append(name)

    onnx_name = f"{prefix}_onnx"
    add(onnx_name, ONNX_PLATFORM, {"model.onnx": bundle.model_bytes})
    half = fp16_model(bundle)
    if half is not None:
        add(f"{prefix}_onnx_fp16", ONNX_PLATFORM, {"model.onnx": half})
    target = onnx_name
    by_cc: dict[str, Engine] = {}
    for plan in sorted(engines, key=lambda p: ("_fp16_" not in p[0], p[0])):
        cc = _cc_of(plan[0])
        if cc is not None and cc not in by_cc:
            by_cc[cc] = plan
    if by_cc:
        trt_name = f"{prefix}_trt"
        first = next(iter(by_cc.values()))
        add(
            trt_name,
            TRT_PLATFORM,
            dict(by_cc.values()),
            default_filename=first[0],
            cc_filenames={cc: p[0] for cc, p in by_cc.items()},
        )
        target = trt_name
    step = Step(
        target,
        {s.name: s.name for s in m.inputs},
        {s.name: s.name for s in m.outputs},
    )
    (out / prefix / "1").mkdir(parents=True, exist_ok=True)
    (out / prefix / "config.pbtxt").write_text(
        ensemble_config(prefix, m.inputs, m.outputs, [step], max_batch=max_batch),
        encoding="utf-8",
    )
    report.models.append(prefix)
    report.ensemble, report.ensemble_target = prefix, target
    (out / "README.md").write_text(_readme(bundle, report), encoding="utf-8")
    return report


def _readme(bundle: Bundle, report: RepositoryReport) -> str:
    return (
        f"# Triton model repository for {bundle.version_label}\n\n"
        f"Written by `fame-node export triton` from {bundle.path}.\n\n"
        f"Clients call the ensemble `{report.ensemble}` (input `image`, outputs "
        f"`lesion_prob`, `class_prob`); it runs `{report.ensemble_target}`.\n"
        f"Models: {', '.join(f'`{n}`' for n in report.models)}.\n\n"
        "Inputs are preprocessed frames exactly as the node makes them "
        "(`appliance.preprocess.preprocess` with the bundle manifest's parameters).\n"
        "TensorRT plans run only on the GPU model and TensorRT version they were built "
        "with; rebuild them on the serving machine with the TensorRT of its Triton release.\n"
    )


# --------------------------------------------------------------------------- reading back

Value = Union[str, int, float, "Message"]
Message = dict[str, list[Value]]
_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|([{}\[\]:,])|([^\s{}\[\]:,"#]+))')


def parse_pbtxt(text: str) -> Message:
    """Parse protobuf text format (the subset Triton configs use) into nested dicts.

    Every field maps to the list of its values (repeated fields, ``[a, b]`` lists and
    repeated messages alike); strings are unquoted, numbers become int / float, enum
    names stay strings.

    Raises
    ------
    ValueError
        the text is not well-formed.
    """
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            if text[pos:].strip() == "":
                break
            raise ValueError(f"unexpected character at offset {pos}: {text[pos : pos + 20]!r}")
        pos = match.end()
        if match.group(1) is None and match.lastindex is not None:
            tokens.append(match.group(match.lastindex))
    message, end = _parse_fields(tokens, 0, closing=None)
    if end != len(tokens):
        raise ValueError(f"unexpected {tokens[end]!r} at token {end}")
    return message


def _scalar(token: str) -> Value:
    if token.startswith('"'):
        return bytes(token[1:-1], "utf-8").decode("unicode_escape")
    for kind in (int, float):
        try:
            return kind(token)
        except ValueError:
            pass
    return token


def _parse_fields(tokens: list[str], i: int, closing: str | None) -> tuple[Message, int]:
    message: Message = {}
    while i < len(tokens) and tokens[i] != closing:
        key = tokens[i]
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"expected a field name, got {key!r}")
        i += 1
        if i < len(tokens) and tokens[i] == ":":
            i += 1
        if i >= len(tokens):
            raise ValueError(f"field {key} has no value")
        values, i = _parse_value(tokens, i)
        message.setdefault(key, []).extend(values)
        if i < len(tokens) and tokens[i] in (",", ";"):
            i += 1
    if closing is not None:
        if i >= len(tokens):
            raise ValueError(f"missing {closing!r}")
        i += 1
    return message, i


def _parse_value(tokens: list[str], i: int) -> tuple[list[Value], int]:
    token = tokens[i]
    if token == "{":
        sub, i = _parse_fields(tokens, i + 1, closing="}")
        return [sub], i
    if token == "[":
        values: list[Value] = []
        i += 1
        while i < len(tokens) and tokens[i] != "]":
            if tokens[i] == ",":
                i += 1
                continue
            value, i = _parse_value(tokens, i)
            values.extend(value)
        if i >= len(tokens):
            raise ValueError("missing ']'")
        return values, i + 1
    if token in ("}", "]", ":", ","):
        raise ValueError(f"unexpected {token!r}")
    return [_scalar(token)], i + 1
