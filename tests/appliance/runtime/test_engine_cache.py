"""Engine cache entries are loaded only with the record the node wrote (issue 8, item 9).

There is no GPU here: the cache, the verify-then-load path and ``export engines
--into-bundle`` run for real on real files; only TensorRT's builder is replaced by a small
function that makes plan bytes from the ONNX bytes it is given (and the machine's key by
a fixed GPU), since neither exists without a GPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import stat
from pathlib import Path

import pytest

from appliance.bundle import Bundle, load_bundle
from appliance.cli import main
from appliance.runtime.engine_cache import RECORD_SUFFIX, EngineCache
from exporters import engines
from exporters.engines import engine_for, engine_source, fp16_name, plan_key
from exporters.tensorrt import BuildSettings, EngineKey, GpuInfo, engine_filename
from tests.exporters.tinybundle import make_tiny_bundle

H100 = GpuInfo("NVIDIA H100 80GB HBM3", (9, 0))


def _key(bundle: Bundle, **changes: object) -> EngineKey:
    sha = bundle.manifest.files["model.onnx"]
    return dataclasses.replace(EngineKey(H100, "10.3.0", "fp32", sha, 8), **changes)  # type: ignore[arg-type]


class Builder:
    """Stands in for TensorRT's builder: a "plan" naming the ONNX bytes it was built from."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(
        self, onnx: bytes, key: EngineKey, settings: BuildSettings, timing: bytes | None
    ) -> tuple[bytes, bytes]:
        self.calls += 1
        return b"PLAN:" + hashlib.sha256(onnx).hexdigest().encode(), b"TIMING"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return load_bundle(make_tiny_bundle(tmp_path_factory.mktemp("ec") / "bundle"))


def test_a_built_entry_is_recorded_and_then_loaded_from_the_cache(
    bundle: Bundle, tmp_path: Path
) -> None:
    cache, build = EngineCache(tmp_path / "engines"), Builder()
    first = engine_for(bundle, _key(bundle), cache, build=build)
    assert first.origin == "built" and build.calls == 1
    record = json.loads((cache.records / (first.name + RECORD_SUFFIX)).read_text())
    assert record["sha256"] == hashlib.sha256(first.data).hexdigest()
    assert record["source_sha256"] == bundle.manifest.files["model.onnx"]
    assert record["build_key"] == plan_key(_key(bundle))
    assert stat.S_IMODE(cache.records.stat().st_mode) == 0o700
    again = engine_for(bundle, _key(bundle), cache, build=build)
    assert (again.origin, again.data, build.calls) == ("cache", first.data, 1)


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        ("unrecorded", "no record of building it"),
        ("changed", "differs from the"),
        ("other_source", "built from another ONNX"),
        ("symlink", "cannot be read safely"),
        ("open_records", "may be written by other users"),
    ],
)
def test_anything_else_in_the_cache_is_rebuilt_and_logged(
    bundle: Bundle,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    damage: str,
    why: str,
) -> None:
    cache, build = EngineCache(tmp_path / "engines"), Builder()
    key = _key(bundle)
    name = engine_filename(key)
    good = engine_for(bundle, key, cache, build=build).data
    entry, record = cache.folder / name, cache.records / (name + RECORD_SUFFIX)
    hostile = b"a plan someone else put here: deserialising it runs their code"
    if damage == "unrecorded":
        record.unlink()
        entry.write_bytes(hostile)
    elif damage == "changed":
        entry.write_bytes(hostile)
    elif damage == "other_source":
        doc = json.loads(record.read_text())
        doc["source_sha256"] = "0" * 64
        record.write_text(json.dumps(doc))
    elif damage == "symlink":
        elsewhere = tmp_path / "elsewhere.plan"
        elsewhere.write_bytes(good)  # the very bytes recorded: only the link is wrong
        entry.unlink()
        entry.symlink_to(elsewhere)
    elif damage == "open_records":
        os.chmod(cache.records, 0o777)
    caplog.set_level(logging.WARNING, logger="fame_node.runtime")
    assert cache.load(name, source_sha256=hashlib.sha256(bundle.model_bytes).hexdigest(),
                      build_key=plan_key(key)) is None  # fmt: skip
    assert f"engine cache entry {name} not used" in caplog.text and why in caplog.text
    rebuilt = engine_for(bundle, key, cache, build=build)
    assert (rebuilt.origin, rebuilt.data, build.calls) == ("built", good, 2)
    assert entry.read_bytes() == good and not entry.is_symlink()
    if damage == "open_records":  # nothing is recorded into a folder others may write
        assert f"engine cache entry {name} could not be stored" in caplog.text
        os.chmod(cache.records, 0o700)


def test_nothing_in_the_cache_is_silent(bundle: Bundle, tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "none")
    assert cache.load("x.plan", source_sha256="0" * 64, build_key={}) is None
    with pytest.raises(ValueError, match="not a cache entry name"):
        cache.load("../x.plan", source_sha256="0" * 64, build_key={})


def test_a_shipped_engine_comes_from_the_verified_bundle(bundle: Bundle, tmp_path: Path) -> None:
    from exporters.variants import add_engine

    path = make_tiny_bundle(tmp_path / "b")
    key = _key(load_bundle(path))
    add_engine(path, engine_filename(key), b"PLAN shipped with the bundle")
    shipped = load_bundle(path)
    build = Builder()
    engine = engine_for(shipped, key, EngineCache(tmp_path / "engines"), build=build)
    assert (engine.origin, engine.data, build.calls) == (
        "bundle",
        b"PLAN shipped with the bundle",
        0,
    )
    forced = engine_for(
        shipped, key, EngineCache(tmp_path / "engines"), build=build, skip=frozenset({"bundle"})
    )
    assert forced.origin == "built"


def test_the_fp16_onnx_for_tensorrt_11_is_cached_with_its_record(
    bundle: Bundle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = _key(bundle, tensorrt_version="11.0.0", precision="fp16")
    cache = EngineCache(tmp_path / "engines")
    converted = engine_source(bundle, key, cache)  # the real FP16 conversion, in memory
    name = fp16_name(key.model_sha256)
    assert (cache.folder / name).read_bytes() == converted

    def refuse(fp32: bytes) -> bytes:
        raise AssertionError("converted again although the cached one is recorded")

    assert engine_source(bundle, key, cache, refuse) == converted
    (cache.folder / name).write_bytes(b"tampered fp16 model")
    caplog.set_level(logging.WARNING, logger="fame_node.runtime")
    assert engine_source(bundle, key, cache) == converted  # converted again, not loaded
    assert f"engine cache entry {name} not used" in caplog.text


def test_export_engines_into_the_bundle_adds_only_verified_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import exporters.tensorrt

    path = make_tiny_bundle(tmp_path / "bundle")
    bundle = load_bundle(path)
    key = _key(bundle, precision="fp16")
    cache = tmp_path / "engines"
    cache.mkdir()
    (cache / engine_filename(key)).write_bytes(b"unrecorded plan from somewhere")
    monkeypatch.setenv("FAME_NODE_PATHS__ROOT", str(tmp_path / "node"))
    monkeypatch.setenv("FAME_NODE_RUNTIME__ENGINE_CACHE_DIR", str(cache))
    monkeypatch.setattr(exporters.tensorrt, "machine_key", lambda sha, precision, mb: key)
    build = Builder()
    monkeypatch.setattr(
        engines, "build_plan", lambda onnx, k, s, timing_cache: build(onnx, k, s, timing_cache)
    )
    assert main(["export", "engines", "--bundle", str(path), "--into-bundle"]) == 0
    assert build.calls == 1  # the unrecorded file was rebuilt, not copied
    shipped = load_bundle(path)
    data = shipped.data(f"engines/{engine_filename(key)}")
    assert data == b"PLAN:" + hashlib.sha256(bundle.model_bytes).hexdigest().encode()
    assert "added to bundle" in capsys.readouterr().out
