"""Triton model repository: config.pbtxt files parsed back and checked against the manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.bundle import Bundle, TensorSpec, load_bundle
from appliance.runtime.engine_cache import EngineCache
from exporters.engines import plan_key
from exporters.tensorrt import EngineKey, GpuInfo, engine_filename
from exporters.triton import (
    Step,
    TritonExportError,
    bundle_engines,
    ensemble_config,
    parse_pbtxt,
    write_triton_repository,
)
from tests.exporters.tinybundle import SIZE, make_tiny_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return load_bundle(make_tiny_bundle(tmp_path_factory.mktemp("tb") / "bundle"))


def _config(path: Path) -> dict:
    return parse_pbtxt(path.read_text(encoding="utf-8"))


def _tensors(cfg: dict, kind: str) -> dict[str, tuple[str, list[int]]]:
    return {t["name"][0]: (t["data_type"][0], t["dims"]) for t in cfg[kind]}


def test_onnx_model_and_ensemble(bundle: Bundle, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    report = write_triton_repository(bundle, out, max_batch=8)
    assert report.models == ["fame_node_onnx", "fame_node"]
    assert (out / "fame_node_onnx" / "1" / "model.onnx").read_bytes() == bundle.model_bytes
    onnx_cfg = _config(out / "fame_node_onnx" / "config.pbtxt")
    assert onnx_cfg["name"] == ["fame_node_onnx"]
    assert onnx_cfg["platform"] == ["onnxruntime_onnx"]
    assert onnx_cfg["max_batch_size"] == [8]
    expected_in = {"image": ("TYPE_FP32", [1, SIZE, SIZE])}
    expected_out = {
        "lesion_prob": ("TYPE_FP32", [1, SIZE, SIZE]),
        "class_prob": ("TYPE_FP32", [3]),
    }
    assert _tensors(onnx_cfg, "input") == expected_in
    assert _tensors(onnx_cfg, "output") == expected_out
    batching = onnx_cfg["dynamic_batching"][0]
    assert batching["preferred_batch_size"] == [4, 8]
    assert batching["max_queue_delay_microseconds"] == [2000]

    ens = _config(out / "fame_node" / "config.pbtxt")
    assert ens["platform"] == ["ensemble"]
    assert (out / "fame_node" / "1").is_dir()
    assert _tensors(ens, "input") == expected_in
    assert _tensors(ens, "output") == expected_out
    steps = ens["ensemble_scheduling"][0]["step"]
    assert [s["model_name"] for s in steps] == [["fame_node_onnx"]]
    step = steps[0]
    assert {m["key"][0]: m["value"][0] for m in step["input_map"]} == {"image": "image"}
    assert {m["key"][0]: m["value"][0] for m in step["output_map"]} == {
        "lesion_prob": "lesion_prob",
        "class_prob": "class_prob",
    }
    assert "fame_node_onnx" in (out / "README.md").read_text()


def test_engines_become_a_tensorrt_model_the_ensemble_uses(bundle: Bundle, tmp_path: Path) -> None:
    sha = bundle.manifest.files["model.onnx"]
    cache = EngineCache(tmp_path / "engines")
    keys = [
        EngineKey(GpuInfo("NVIDIA H100 80GB HBM3", (9, 0)), "10.3.0", "fp16", sha, 8),
        EngineKey(GpuInfo("NVIDIA H100 80GB HBM3", (9, 0)), "10.3.0", "fp32", sha, 8),
        EngineKey(GpuInfo("NVIDIA L4", (8, 9)), "10.3.0", "fp16", sha, 8),
        EngineKey(GpuInfo("NVIDIA L4", (8, 9)), "10.3.0", "fp16", "0123456789abcdef" * 4, 8),
    ]
    names = [engine_filename(k) for k in keys]
    for key, name in zip(keys, names, strict=True):  # what the node records when it builds
        cache.store(name, b"plan " + name.encode(), source_sha256=sha, build_key=plan_key(key))
    unrecorded = names[0].replace("_b8", "_b4")
    (cache.folder / unrecorded).write_bytes(b"a plan the node never built")
    engines = bundle_engines(bundle, [cache])
    assert sorted(n for n, _ in engines) == sorted(names[:3])  # not another model's, nor
    assert dict(engines)[names[0]] == b"plan " + names[0].encode()  # an unrecorded one
    report = write_triton_repository(bundle, tmp_path / "repo", engines=engines)
    assert report.ensemble_target == "fame_node_trt"
    cfg = _config(tmp_path / "repo" / "fame_node_trt" / "config.pbtxt")
    assert cfg["platform"] == ["tensorrt_plan"]
    ccs = {m["key"][0]: m["value"][0] for m in cfg["cc_model_filenames"]}
    assert ccs == {"9.0": names[0], "8.9": names[2]}  # FP16 preferred per capability
    for filename in ccs.values():
        assert (tmp_path / "repo" / "fame_node_trt" / "1" / filename).is_file()
    ens = _config(tmp_path / "repo" / "fame_node" / "config.pbtxt")
    assert ens["ensemble_scheduling"][0]["step"][0]["model_name"] == ["fame_node_trt"]


def test_two_step_ensemble_for_separate_graphs() -> None:
    image = TensorSpec(name="image", shape=["batch", 1, 8, 8])
    lesion = TensorSpec(name="lesion_prob", shape=["batch", 1, 8, 8])
    cls = TensorSpec(name="class_prob", shape=["batch", 3])
    steps = [
        Step("seg", {"image": "image"}, {"lesion_prob": "lesion_prob"}),
        Step("cls", {"image": "image", "lesion_prob": "lesion_prob"}, {"class_prob": "class_prob"}),
    ]
    cfg: Any = parse_pbtxt(ensemble_config("e", [image], [lesion, cls], steps, max_batch=4))
    assert [s["model_name"][0] for s in cfg["ensemble_scheduling"][0]["step"]] == ["seg", "cls"]
    with pytest.raises(TritonExportError, match="no earlier step"):
        ensemble_config("e", [image], [cls], steps[1:], max_batch=4)
    with pytest.raises(TritonExportError, match="produces"):
        ensemble_config("e", [image], [lesion, cls], steps[:1], max_batch=4)


def test_refuses_a_non_empty_folder_and_bad_names(bundle: Bundle, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(TritonExportError, match="not empty"):
        write_triton_repository(bundle, out)
    write_triton_repository(bundle, out, overwrite=True)
    assert not (out / "keep.txt").exists()
    with pytest.raises(TritonExportError, match="model name"):
        write_triton_repository(bundle, tmp_path / "r2", prefix="bad name")


def test_parse_pbtxt_handles_comments_lists_and_errors() -> None:
    text = '# comment\nname: "a \\"b\\""\nx [ 1, 2.5, -3 ]\nm { k: V }\nm { k: W }\n'
    assert parse_pbtxt(text) == {
        "name": ['a "b"'],
        "x": [1, 2.5, -3],
        "m": [{"k": ["V"]}, {"k": ["W"]}],
    }
    for bad in ("m { k: 1", "x [ 1, 2", "{ }", "k:"):
        with pytest.raises(ValueError):
            parse_pbtxt(bad)
