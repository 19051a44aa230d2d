"""The TensorRT engine for a bundle on this machine, from verified bytes only.

`engine_for` is what the node (`appliance.runtime.factory`) and ``fame-node export
engines`` both use. In order:

1. the bundle ships ``engines/<name>.plan`` for this key: its bytes were verified against
   the (signed) manifest by `load_bundle`;
2. the engine cache holds the entry with a record the node wrote when it built it, matching
   the bytes read, the ONNX it was built from and the build key
   (`appliance.runtime.engine_cache`);
3. otherwise it is built now from the bundle's verified ONNX bytes (for TensorRT 11 FP16:
   the bundle's FP16 ONNX, or one converted now, itself cached with a record) and stored
   in the cache with its record.

Anything else in the cache (no record, another checksum, a link) is logged and rebuilt.
The result carries the bytes: the caller deserialises or copies exactly those.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from appliance.bundle import Bundle
from appliance.runtime.engine_cache import EngineCache
from appliance.runtime.variants import batch_dims, engine_file, fp16_model
from exporters.tensorrt import (
    TIMING_CACHE_NAME,
    BuildSettings,
    EngineBuildError,
    EngineKey,
    build_plan,
    engine_filename,
)

Origin = Literal["bundle", "cache", "built"]
Builder = Callable[[bytes, EngineKey, BuildSettings, bytes | None], tuple[bytes, bytes]]
Fp16Converter = Callable[[bytes], bytes]


@dataclass(frozen=True)
class VerifiedEngine:
    """A plan's bytes, its file name (its build key) and where it came from."""

    data: bytes
    name: str
    origin: Origin

    def __repr__(self) -> str:
        return f"VerifiedEngine({self.name!r}, {self.origin}, {len(self.data)} bytes)"


def plan_key(key: EngineKey) -> dict[str, Any]:
    """The build key recorded with a plan: everything its validity depends on."""
    return {
        "kind": "tensorrt-plan",
        "gpu": key.gpu.name,
        "compute_capability": f"{key.gpu.compute_capability[0]}.{key.gpu.compute_capability[1]}",
        "tensorrt": key.tensorrt_version,
        "precision": key.precision,
        "max_batch": key.max_batch,
        "model_sha256": key.model_sha256,
    }


def fp16_name(model_sha256: str) -> str:
    return f"{model_sha256[:16]}.fp16.onnx"


def _build(
    onnx: bytes, key: EngineKey, settings: BuildSettings, timing: bytes | None
) -> tuple[bytes, bytes]:
    return build_plan(onnx, key, settings, timing_cache=timing)


def _to_fp16(fp32: bytes) -> bytes:
    from exporters.fp16 import Fp16Error, fp16_bytes

    try:
        return fp16_bytes(fp32, label="the bundle's model.onnx")
    except Fp16Error as exc:
        raise EngineBuildError(f"the FP16 ONNX TensorRT 11 needs cannot be made: {exc}") from exc


def engine_source(
    bundle: Bundle, key: EngineKey, cache: EngineCache, to_fp16: Fp16Converter = _to_fp16
) -> bytes:
    """The verified ONNX bytes an engine of `key` is built from.

    TensorRT 11 takes FP16 from the graph's types, so an FP16 engine there needs the FP16
    ONNX: the bundle's, else the cached one the node converted (with its record), else one
    converted now and cached. TensorRT 10 builds FP16 from the FP32 graph."""
    fp32 = bundle.model_bytes
    if key.precision != "fp16" or not key.strongly_typed:
        return fp32
    shipped = fp16_model(bundle)
    if shipped is not None:
        return shipped
    name = fp16_name(key.model_sha256)
    build_key = {"kind": "fp16-onnx", "model_sha256": key.model_sha256}
    cached = cache.load(name, source_sha256=key.model_sha256, build_key=build_key)
    if cached is not None:
        return cached
    converted = to_fp16(fp32)
    cache.store(name, converted, source_sha256=key.model_sha256, build_key=build_key)
    return converted


def engine_for(
    bundle: Bundle,
    key: EngineKey,
    cache: EngineCache,
    *,
    skip: frozenset[Origin] = frozenset(),
    build: Builder | None = None,
    to_fp16: Fp16Converter | None = None,
) -> VerifiedEngine:
    """The verified engine of `key` for `bundle` (see the module docstring).

    `skip` leaves out sources already tried (an engine that no longer deserialises:
    ``{"bundle", "cache"}`` forces a build). `build` and `to_fp16` default to TensorRT's
    builder and the FP16 converter (tests without a GPU pass their own builder).

    Raises
    ------
    EngineBuildError
        the engine had to be built and could not be.
    BundleError
        the bundle was not verified.
    """
    name = engine_filename(key)
    shipped = engine_file(name)
    if "bundle" not in skip and bundle.has(shipped):
        return VerifiedEngine(bundle.data(shipped), name, "bundle")
    source = engine_source(bundle, key, cache, to_fp16 or _to_fp16)
    source_sha = hashlib.sha256(source).hexdigest()
    build_key = plan_key(key)
    if "cache" not in skip:
        cached = cache.load(name, source_sha256=source_sha, build_key=build_key)
        if cached is not None:
            return VerifiedEngine(cached, name, "cache")
    timing_key = {"kind": "tensorrt-timing-cache", **{k: build_key[k] for k in ("gpu", "tensorrt")}}
    timing = cache.load(TIMING_CACHE_NAME, source_sha256="", build_key=timing_key)
    input_name, dims = batch_dims(bundle)
    settings = BuildSettings(input_name, dims, key.max_batch)
    plan, new_timing = (build or _build)(source, key, settings, timing)
    cache.store(name, plan, source_sha256=source_sha, build_key=build_key)
    cache.store(TIMING_CACHE_NAME, new_timing, source_sha256="", build_key=timing_key)
    return VerifiedEngine(plan, name, "built")
