"""ONNX -> TensorRT engines, cached by what makes an engine valid.

A TensorRT engine ("plan") runs only on the GPU model, compute capability and TensorRT
version it was built with, and at the precision it was built for. `EngineKey` names those
four (plus the ONNX file's sha256 and the largest batch), and `engine_filename` turns a key
into the file name the cache uses, so a node with another GPU or another TensorRT never
picks up a foreign engine: it finds no file and builds its own (DESIGN.md, "Model bundle").

`build_plan` parses the (verified) ONNX bytes, adds one optimisation profile for batch
1..max_batch on the (dynamic) batch axis, reuses and updates a timing cache (so a rebuild
after an upgrade takes seconds instead of minutes), and returns the serialized plan; the
engine cache writes it with a record of its checksum (`exporters.engines`).

Precision, by TensorRT major version:

- **TensorRT 10**: weakly typed networks; FP16 is the builder flag ``BuilderFlag.FP16`` on the
  FP32 ONNX, and TensorRT chooses per layer.
- **TensorRT 11+**: every network is strongly typed and the precision flags are gone; FP16
  comes from the FP16 ONNX (`exporters.fp16`), whose tensor types TensorRT obeys.

Everything that imports ``tensorrt`` does it lazily, inside the function that needs it:
this module imports on any machine, and `tensorrt_version` returns None where TensorRT is
not installed. `detect_gpu` reads the GPU through torch (if it has CUDA) or ``nvidia-smi``.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger("fame_node.tensorrt")

Precision = Literal["fp16", "fp32"]
PRECISIONS: tuple[Precision, ...] = ("fp16", "fp32")
ENGINE_SUFFIX = ".plan"
TIMING_CACHE_NAME = "timing.cache"
DEFAULT_WORKSPACE_BYTES = 2 << 30


class EngineBuildError(RuntimeError):
    """TensorRT is missing, or could not parse the ONNX or build the engine."""


@dataclass(frozen=True)
class GpuInfo:
    """The GPU an engine is built for."""

    name: str  # e.g. "NVIDIA H100 80GB HBM3"
    compute_capability: tuple[int, int]  # e.g. (9, 0)

    @property
    def sm(self) -> str:
        return f"sm{self.compute_capability[0]}{self.compute_capability[1]}"


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine's validity depends on."""

    gpu: GpuInfo
    tensorrt_version: str
    precision: Precision
    model_sha256: str
    max_batch: int

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if not re.fullmatch(r"[0-9a-f]{12,64}", self.model_sha256):
            raise ValueError(f"model_sha256 must be hex digits, got {self.model_sha256!r}")

    @property
    def strongly_typed(self) -> bool:
        """TensorRT 11 and later build only strongly typed networks."""
        return tensorrt_major(self.tensorrt_version) >= 11


def slug(text: str) -> str:
    """Lower-case letters, digits and dashes only (for file names)."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.") or "unknown"


def engine_filename(key: EngineKey) -> str:
    """The cache file name of `key`; two keys share a name only if they are equal.

    ``<model sha256[:16]>_<gpu>_<sm>_trt<version>_<precision>_b<max batch>.plan``, e.g.
    ``c9c35c50b88e0a46_nvidia-h100-80gb-hbm3_sm90_trt10.3.0_fp16_b8.plan``.
    """
    return (
        f"{key.model_sha256[:16]}_{slug(key.gpu.name)}_{key.gpu.sm}_"
        f"trt{slug(key.tensorrt_version)}_{key.precision}_b{key.max_batch}{ENGINE_SUFFIX}"
    )


def tensorrt_major(version: str) -> int:
    match = re.match(r"(\d+)", version)
    if match is None:
        raise ValueError(f"not a TensorRT version: {version!r}")
    return int(match.group(1))


def onnx_for_precision(fp32_onnx: Path, fp16_onnx: Path | None, key: EngineKey) -> Path:
    """The ONNX file an engine of `key` is built from.

    TensorRT 11 takes FP16 from the graph's types, so an FP16 engine needs the FP16 ONNX;
    TensorRT 10 builds FP16 from the FP32 graph with the builder flag.
    """
    if key.precision == "fp16" and key.strongly_typed:
        if fp16_onnx is None or not fp16_onnx.is_file():
            raise EngineBuildError(
                f"TensorRT {key.tensorrt_version} builds strongly typed networks: an FP16 "
                "engine needs the bundle's FP16 ONNX, which it does not have. Add it with "
                "`fame-node export onnx --bundle DIR`, or use precision fp32."
            )
        return fp16_onnx
    return fp32_onnx


# --------------------------------------------------------------------------- the machine


def tensorrt_version() -> str | None:
    """The installed TensorRT's version, or None if it cannot be imported."""
    try:
        trt = importlib.import_module("tensorrt")
    except Exception:  # ImportError, or a broken install raising OSError from its libraries
        return None
    return str(trt.__version__)


def detect_gpu() -> GpuInfo | None:
    """The first CUDA GPU (through torch if it has CUDA, else ``nvidia-smi``), or None."""
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return GpuInfo(str(props.name), (int(props.major), int(props.minor)))
    except ImportError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_nvidia_smi(out)


def parse_nvidia_smi(text: str) -> GpuInfo | None:
    """The first line of ``nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader``."""
    for line in text.splitlines():
        name, _, cap = line.rpartition(",")
        match = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", cap)
        if name.strip() and match:
            return GpuInfo(name.strip(), (int(match.group(1)), int(match.group(2))))
    return None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def machine_key(model_sha256: str, precision: Precision, max_batch: int) -> EngineKey:
    """The `EngineKey` for this machine's GPU and TensorRT.

    Raises
    ------
    EngineBuildError
        no CUDA GPU is visible, or TensorRT is not installed.
    """
    version = tensorrt_version()
    if version is None:
        raise EngineBuildError(
            "TensorRT is not installed (`import tensorrt` fails): install the 'gpu' extra "
            "(pip install 'fame-node[gpu]') on this GPU machine"
        )
    gpu = detect_gpu()
    if gpu is None:
        raise EngineBuildError(
            "no CUDA GPU is visible here (neither torch.cuda nor nvidia-smi finds one): "
            "TensorRT engines can only be built on the GPU they will run on"
        )
    return EngineKey(gpu, version, precision, model_sha256, max_batch)


# --------------------------------------------------------------------------- building


@dataclass(frozen=True)
class BuildSettings:
    """How to build: input tensor layout, batch range and builder memory."""

    input_name: str
    input_shape: tuple[int, ...]  # without the batch axis, e.g. (1, 128, 128)
    max_batch: int
    opt_batch: int | None = None  # None: max_batch
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES


def build_plan(
    onnx_model: bytes,
    key: EngineKey,
    settings: BuildSettings,
    *,
    timing_cache: bytes | None = None,
) -> tuple[bytes, bytes]:
    """Build a TensorRT engine for `key` from the (verified) ONNX bytes `onnx_model`.

    The engine has one optimisation profile: batch 1 (min), `opt_batch` (opt) and
    `max_batch` (max). `timing_cache` (verified bytes, or None to start empty) speeds the
    build up. Returns the serialized plan and the updated timing cache; writing them, with
    their records, is the engine cache's job (`appliance.runtime.engine_cache`).

    Raises
    ------
    EngineBuildError
        TensorRT is missing or older than 10, or the ONNX cannot be parsed or built.
    """
    try:
        trt = importlib.import_module("tensorrt")
    except Exception as exc:
        raise EngineBuildError(f"TensorRT cannot be imported: {exc}") from exc
    installed = str(trt.__version__)
    if installed != key.tensorrt_version:
        raise EngineBuildError(
            f"the key is for TensorRT {key.tensorrt_version} but {installed} is installed"
        )
    major = tensorrt_major(installed)
    if major < 10:
        raise EngineBuildError(f"TensorRT {installed} is too old: this node needs 10 or later")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 10: explicit batch is the only mode, flags 0; TensorRT 11: strongly typed always.
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_model):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(
            f"TensorRT cannot parse the ONNX for {engine_filename(key)}: {errors}"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    if key.precision == "fp16" and not key.strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    opt = settings.opt_batch or settings.max_batch
    shape = tuple(settings.input_shape)
    profile.set_shape(
        settings.input_name, (1, *shape), (min(opt, settings.max_batch), *shape),
        (settings.max_batch, *shape),
    )  # fmt: skip
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache or b"")
    # A cache from another GPU / TensorRT is ignored entry by entry, never trusted.
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT could not build {engine_filename(key)} (see the TensorRT log above)"
        )
    log.info("TensorRT engine built: %s", engine_filename(key))
    return bytes(serialized), bytes(cache.serialize())


def build_engine(
    onnx_path: Path,
    out_path: Path,
    key: EngineKey,
    settings: BuildSettings,
) -> Path:
    """`build_plan` from a file into a file (for the benchmarks, which build and run their
    own engine at once; the node goes through `exporters.engines.engine_for`)."""
    plan, _ = build_plan(onnx_path.read_bytes(), key, settings)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_bytes(plan)
    tmp.replace(out_path)
    return out_path
