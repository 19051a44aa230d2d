"""FP16 ONNX variant: valid graph, FP32 interface, FP32-only inputs kept, within tolerance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from exporters.fp16 import (
    Fp16ConversionError,
    Fp16ToleranceError,
    convert_to_fp16,
    export_fp16,
    fp16_path,
)
from exporters.onnx_export import export_onnx
from tests.exporters.families import (
    ClassifierFamily,
    CombinedFamily,
    LesionProbeFamily,
    MAUNetFamily,
)
from trainer.models import FameNodeNet, LesionClassifier, MAUNet

SIZE = 32


class Fp16Contract:
    """Every model family's FP16 variant: checker-valid, FP32 I/O, FP16 weights, close."""

    in_channels = 1
    input_name = "image"
    output_names: tuple[str, ...] = ("out",)

    @classmethod
    def build(cls) -> nn.Module:
        raise NotImplementedError

    @pytest.fixture(scope="class")
    @classmethod
    def converted(cls, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
        import torch

        torch.manual_seed(0)
        folder = tmp_path_factory.mktemp("fp16")
        fp32 = folder / "model.onnx"
        export_onnx(
            cls.build().eval(),
            fp32,
            SIZE,
            in_channels=cls.in_channels,
            input_name=cls.input_name,
            output_names=cls.output_names,
        )
        rng = np.random.default_rng(0)
        inputs = [rng.standard_normal((b, cls.in_channels, SIZE, SIZE)).astype(np.float32)
                  for b in (1, 3)]  # fmt: skip
        report = export_fp16(fp32, inputs=inputs)
        return fp32, report.path, report.max_abs_diff

    def test_checker_accepts_it(self, converted: tuple[Path, Path, dict]) -> None:
        onnx.checker.check_model(onnx.load(str(converted[1])), full_check=True)

    def test_interface_stays_fp32_and_dynamic(self, converted: tuple[Path, Path, dict]) -> None:
        graph = onnx.load(str(converted[1])).graph
        for value in [*graph.input, *graph.output]:
            assert value.type.tensor_type.elem_type == TensorProto.FLOAT
            assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
        assert [o.name for o in graph.output] == list(self.output_names)

    def test_weights_are_fp16_and_half_the_size(self, converted: tuple[Path, Path, dict]) -> None:
        fp32, fp16, _ = converted

        def weight_bytes(path: Path) -> dict[int, int]:
            sizes: dict[int, int] = {}
            for t in onnx.load(str(path)).graph.initializer:
                if t.data_type != TensorProto.INT64:
                    sizes[t.data_type] = sizes.get(t.data_type, 0) + len(t.raw_data)
            return sizes

        before, after = weight_bytes(fp32), weight_bytes(fp16)
        assert set(before) == {TensorProto.FLOAT}
        assert set(after) == {TensorProto.FLOAT16}
        assert after[TensorProto.FLOAT16] * 2 == before[TensorProto.FLOAT]

    def test_close_to_fp32(self, converted: tuple[Path, Path, dict]) -> None:
        diffs = converted[2]
        assert set(diffs) == set(self.output_names)
        assert max(diffs.values()) < 5e-2


class TestMAUNetFp16(MAUNetFamily, Fp16Contract):
    pass


class TestClassifierFp16(ClassifierFamily, Fp16Contract):
    pass


class TestCombinedFp16(CombinedFamily, Fp16Contract):
    pass


class TestLesionProbeFp16(LesionProbeFamily, Fp16Contract):
    def test_weights_are_fp16_and_half_the_size(self, converted: tuple[Path, Path, dict]) -> None:
        # The OOD head's statistics stay float32 (kept); every other weight is float16.
        def weights(path: Path) -> dict[str, onnx.TensorProto]:
            return {t.name: t for t in onnx.load(str(path)).graph.initializer}

        before, after = weights(converted[0]), weights(converted[1])
        assert any("ood_head" in n and t.data_type == TensorProto.FLOAT for n, t in after.items())
        network = [n for n in after if n.startswith("net.")]  # MAU-Net, classifier, probe
        assert len(network) > 20
        for name in network:
            assert after[name].data_type == TensorProto.FLOAT16, name
            assert len(after[name].raw_data) * 2 == len(before[name].raw_data), name

    def test_the_lesion_means_run_in_fp32(self, converted: tuple[Path, Path, dict]) -> None:
        # Weighted sums over every pixel: their scope is kept in float32 (DEFAULT_KEEP_FP32).
        half = onnx.shape_inference.infer_shapes(onnx.load(str(converted[1])))
        types = {v.name: v.type.tensor_type.elem_type for v in half.graph.value_info}
        sums = [
            n for n in half.graph.node if "/lesion_means" in n.name and n.op_type == "ReduceSum"
        ]
        assert len(sums) >= 5  # each level's weighted sum and weight sum
        assert all(types[n.output[0]] == TensorProto.FLOAT for n in sums)


# --------------------------------------------------------------------------- graph details


def _resize_model(computed_scales: bool) -> onnx.ModelProto:
    """x -> Conv -> Resize(scales) -> Add(x2); scales constant or computed from Shape."""
    w = numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32) * 0.5, "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"])]
    inits = [w]
    if computed_scales:
        two = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "two")
        inits.append(two)
        nodes += [
            helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("Cast", ["shape"], ["shape_f"], to=TensorProto.FLOAT),
            helper.make_node("Div", ["shape_f", "shape_f"], ["ones"]),
            helper.make_node("Mul", ["ones", "two"], ["scales"]),
        ]
    else:
        inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
    nodes += [
        helper.make_node("Resize", ["c", "", "scales"], ["r"], mode="nearest"),
        helper.make_node("Add", ["r", "r"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "resize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("computed", [False, True])
def test_resize_scales_stay_fp32(tmp_path: Path, computed: bool) -> None:
    model = _resize_model(computed)
    half = onnx.shape_inference.infer_shapes(convert_to_fp16(model))
    onnx.checker.check_model(half, full_check=True)
    resize = next(n for n in half.graph.node if n.op_type == "Resize")
    types = {v.name: v.type.tensor_type.elem_type for v in half.graph.value_info}
    types.update({t.name: t.data_type for t in half.graph.initializer})
    assert types[resize.input[2]] == TensorProto.FLOAT
    assert types[resize.input[0]] == TensorProto.FLOAT16
    fp32_path, fp16_file = tmp_path / "m.onnx", tmp_path / "m.fp16.onnx"
    onnx.save(model, str(fp32_path))
    onnx.save(half, str(fp16_file))
    x = np.random.default_rng(0).standard_normal((2, 1, 4, 4)).astype(np.float32)
    want = ort.InferenceSession(str(fp32_path)).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(fp16_file)).run(None, {"x": x})[0]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-2)


def test_kept_ops_run_in_fp32(tmp_path: Path) -> None:
    net = FameNodeNet(MAUNet(base_width=4), LesionClassifier(widths=(4, 8)))
    fp32 = tmp_path / "model.onnx"
    export_onnx(net, fp32, SIZE)
    report = export_fp16(fp32, keep_fp32=("ReduceMean",))  # GroupNorm's (exporters.group_norm)
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(report.path))).graph
    types = {v.name: v.type.tensor_type.elem_type for v in graph.value_info}
    types.update({t.name: t.data_type for t in graph.initializer})
    norms = [n for n in graph.node if n.op_type == "ReduceMean"]
    assert norms
    for node in norms:
        assert all(types[name] == TensorProto.FLOAT for name in node.input)
        assert types[node.output[0]] == TensorProto.FLOAT
    assert report.kept_fp32 == ("ReduceMean",)
    assert report.path == fp16_path(fp32) == tmp_path / "model.fp16.onnx"


def test_tolerance_is_enforced(tmp_path: Path) -> None:
    net = FameNodeNet(MAUNet(base_width=4), LesionClassifier(widths=(4, 8)))
    fp32 = tmp_path / "model.onnx"
    export_onnx(net, fp32, SIZE)
    with pytest.raises(Fp16ToleranceError, match="FP16 check failed: output 'lesion_prob'"):
        export_fp16(fp32, tolerance=1e-9)


def test_unsupported_ops_are_refused() -> None:
    graph = helper.make_graph(
        [helper.make_node("RandomNormalLike", ["x"], ["y"])],
        "random",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(Fp16ConversionError, match="RandomNormalLike"):
        convert_to_fp16(model)


def test_values_beyond_the_fp16_range_are_refused() -> None:
    big = numpy_helper.from_array(np.array([1e6], np.float32), "big")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "big"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [big],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(Fp16ConversionError, match="beyond the FP16 range"):
        convert_to_fp16(model)


def _mahalanobis_like_graph() -> onnx.ModelProto:
    """x (1, 4) -> d = x - mu; s = sum((d @ P) * d): P holds values beyond float16's range,
    and d @ P of an ordinary x too; a conv-like 'network' node sits outside the scope."""
    precision = np.diag([7.0e4, 1.0, 2.0, 3.0]).astype(np.float32)
    nodes = [
        helper.make_node("Relu", ["x"], ["f"], name="/net/Relu"),
        helper.make_node("Sub", ["f", "mu"], ["d"], name="/ood_head/Sub"),
        helper.make_node("MatMul", ["d", "P"], ["m"], name="/ood_head/MatMul"),
        helper.make_node("Mul", ["m", "d"], ["md"], name="/ood_head/Mul"),
        helper.make_node("ReduceSum", ["md", "axes"], ["score"], name="/ood_head/ReduceSum"),
    ]
    graph = helper.make_graph(
        nodes,
        "mahalanobis",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [1, 1])],
        initializer=[
            numpy_helper.from_array(np.full((1, 4), 0.5, np.float32), "mu"),
            numpy_helper.from_array(precision, "P"),
            numpy_helper.from_array(np.array([1], np.int64), "axes"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_scope_kept_in_fp32_is_one_float32_region_with_float32_constants() -> None:
    model = _mahalanobis_like_graph()
    x = np.array([[1.5, 2.0, 3.0, 4.0]], np.float32)
    expected = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    # d @ P reaches 7e4 (over float16's 65504): a region that rounded through float16
    # between its nodes would give inf; the whole scope stays float32.
    assert expected[0, 0] == pytest.approx(7.0e4 + 2.25 + 12.5 + 36.75, rel=1e-6)
    with pytest.raises(Fp16ConversionError, match="FP16 range"):
        convert_to_fp16(model, keep_fp32=())
    converted = convert_to_fp16(model)  # the default keeps "/ood_head"
    got = ort.InferenceSession(converted.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    types = {t.name: t.data_type for t in converted.graph.initializer}
    assert types["P"] == types["mu"] == TensorProto.FLOAT
    # Only what leaves the network scope enters the region through a cast up.
    ups = [n for n in converted.graph.node if n.op_type == "Cast" and n.input[0] == "f"]
    assert len(ups) == 1
