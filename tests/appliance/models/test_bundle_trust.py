"""A bundle is verified by its files, not their names: links, unlisted files, external data,
post-processing values, and bytes swapped after verification (issue 8, item 10)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from appliance.bundle import MANIFEST_NAME, load_bundle, sha256_file
from appliance.errors import BundleError
from appliance.models.onnx_external import OnnxFormatError, external_tensors
from tests.appliance.models.bundles import placeholder_bundle


def _matmul_model(weights: np.ndarray | None = None) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((4, 4), np.float32) if weights is None else weights, "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _relist(bundle: Path) -> None:
    """Rewrite the manifest's checksums for the files now in the bundle (what a careless or
    hostile exporter would do): only the files themselves can then be judged."""
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    manifest["files"] = {
        p.relative_to(bundle).as_posix(): sha256_file(p)
        for p in sorted(bundle.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))


def test_a_symlinked_member_is_refused(tmp_path: Path) -> None:
    bundle = placeholder_bundle(tmp_path / "b")
    outside = tmp_path / "outside.onnx"
    os.replace(bundle / "model.onnx", outside)
    (bundle / "model.onnx").symlink_to(outside)  # same bytes: the checksum still matches
    with pytest.raises(BundleError, match=r"'model.onnx' is a symbolic link"):
        load_bundle(bundle)


def test_a_symlinked_folder_inside_the_bundle_is_refused(tmp_path: Path) -> None:
    bundle = placeholder_bundle(tmp_path / "b")
    real = tmp_path / "engines-elsewhere"
    real.mkdir()
    (real / "x.plan").write_bytes(b"plan")
    (bundle / "engines").symlink_to(real, target_is_directory=True)
    _relist(bundle)
    with pytest.raises(BundleError, match=r"'engines' is a symbolic link"):
        load_bundle(bundle)


def test_a_fifo_in_the_bundle_is_refused_without_blocking(tmp_path: Path) -> None:
    bundle = placeholder_bundle(tmp_path / "b")
    os.mkfifo(bundle / "notes.txt")
    with pytest.raises(BundleError, match=r"'notes.txt' is a FIFO"):
        load_bundle(bundle)


def test_unlisted_files_are_refused(tmp_path: Path) -> None:
    bundle = placeholder_bundle(tmp_path / "b")
    (bundle / "model.onnx.data").write_bytes(b"\0" * 64)
    with pytest.raises(BundleError, match=r"does not list: 'model.onnx.data'"):
        load_bundle(bundle)
    load_bundle(bundle, verify=False)  # describing it still works (labels, listings)


def test_an_onnx_model_with_external_data_is_refused(tmp_path: Path) -> None:
    bundle = placeholder_bundle(tmp_path / "b")
    onnx.save_model(
        _matmul_model(),
        bundle / "model.onnx",
        save_as_external_data=True,
        location="model.onnx.data",
        size_threshold=0,
    )
    _relist(bundle)  # every file listed and matching: only the model's content can tell
    with pytest.raises(BundleError, match=r"keeps tensor data in external files .*'w'"):
        load_bundle(bundle)


def test_external_data_is_found_wherever_onnx_allows_it() -> None:
    model = _matmul_model()
    assert external_tensors(model.SerializeToString()) == []
    # a Constant node's tensor inside the then-branch of an If
    const = numpy_helper.from_array(np.zeros(3, np.float32), "hidden")
    const.data_location = TensorProto.EXTERNAL
    entry = const.external_data.add()
    entry.key, entry.value = "location", "weights.bin"
    const.ClearField("raw_data")
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=const)],
        "then",
        [],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [3])],
    )
    model.graph.node.append(
        helper.make_node("If", ["cond"], ["out"], then_branch=branch, else_branch=branch)
    )
    assert external_tensors(model.SerializeToString()) == ["hidden", "hidden"]
    with pytest.raises(OnnxFormatError):
        external_tensors(b"not a model at all")


def test_a_model_file_that_is_not_onnx_is_refused(tmp_path: Path) -> None:
    bundle = placeholder_bundle(tmp_path / "b")
    (bundle / "model.onnx").write_bytes(b"not a model: " * 50)
    _relist(bundle)
    with pytest.raises(BundleError, match=r"model.onnx is not an ONNX model"):
        load_bundle(bundle)


@pytest.mark.parametrize(
    ("post", "needle"),
    [
        ({"mask_threshold": -1}, "postprocessing.mask_threshold = -1; expected a number "
         "strictly between 0 and 1"),
        ({"mask_threshold": 0}, "mask_threshold = 0;"),
        ({"mask_threshold": 1.0}, "mask_threshold = 1.0;"),
        ({"mask_threshold": "0.5"}, "mask_threshold = '0.5';"),
        ({"mask_threshold": True}, "mask_threshold = True;"),
        ({"mask_threshold": math.nan}, "mask_threshold = nan;"),
        ({"min_lesion_area_px": -5}, "min_lesion_area_px = -5; expected a number >= 0"),
        ({"mask_treshold": 0.4}, "mask_treshold = 0.4 is not a key this node reads"),
    ],
)  # fmt: skip
def test_post_processing_values_are_checked(
    tmp_path: Path, post: dict[str, object], needle: str
) -> None:
    bundle = placeholder_bundle(tmp_path / "b")
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    manifest["postprocessing"] = post
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="bad post-processing") as info:
        load_bundle(bundle)
    assert needle in str(info.value)


def test_valid_post_processing_passes(tmp_path: Path) -> None:
    bundle = placeholder_bundle(tmp_path / "b")
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    manifest["postprocessing"] = {"mask_threshold": 0.3, "min_lesion_area_px": 0}
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert load_bundle(bundle).manifest.postprocessing["mask_threshold"] == 0.3


def test_the_verified_bytes_are_kept_and_a_later_swap_is_not_seen(tmp_path: Path) -> None:
    bundle_dir = placeholder_bundle(tmp_path / "b")
    original = (bundle_dir / "model.onnx").read_bytes()
    bundle = load_bundle(bundle_dir)
    (bundle_dir / "model.onnx").write_bytes(b"swapped after verification")
    assert bundle.model_bytes == original
    assert bundle.data("model.onnx") == original
    with pytest.raises(BundleError, match=r"does not list 'model\.pt'"):
        bundle.data("model.pt")
    with pytest.raises(BundleError, match="without verification"):
        load_bundle(bundle_dir, verify=False).data("model.onnx")
