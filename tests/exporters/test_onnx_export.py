"""Export contract shared by every model family, and the bundle writer."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from torch import Tensor, nn

from appliance.bundle import TensorSpec, load_bundle
from appliance.errors import BundleError
from exporters.bundle import write_bundle
from exporters.onnx_export import ParityError, export_onnx
from tests.exporters.families import (
    ClassifierFamily,
    CombinedDualStageFamily,
    CombinedFamily,
    DualStageFamily,
    FoldEnsembleFamily,
    LayerProbeFamily,
    LesionProbeFamily,
    MAUNetFamily,
    SingleBackboneFamily,
)
from trainer.models import FameNodeNet, LesionClassifier, MAUNet

SIZE = 32


class ExportParityContract:
    """Every exportable model: passes onnx.checker, has a dynamic batch axis, and matches
    the eager model at batch 1 and 3 within 1e-4. Subclasses say how to build the model."""

    in_channels = 1
    input_name = "image"
    output_names: tuple[str, ...] = ("out",)

    @classmethod
    def build(cls) -> nn.Module:
        raise NotImplementedError

    @pytest.fixture(scope="class")
    @classmethod
    def exported(cls, tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path, dict]:
        torch.manual_seed(0)
        model = cls.build().eval()
        path = tmp_path_factory.mktemp("onnx") / "model.onnx"
        real = torch.rand(3, cls.in_channels, SIZE, SIZE) * 4 - 2
        report = export_onnx(
            model,
            path,
            SIZE,
            in_channels=cls.in_channels,
            input_name=cls.input_name,
            output_names=cls.output_names,
            real_inputs=real,
        )
        return model, path, report.max_abs_diff

    def test_checker_accepts_the_graph(self, exported: tuple[nn.Module, Path, dict]) -> None:
        _, path, _ = exported
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)

    def test_names_and_dynamic_batch(self, exported: tuple[nn.Module, Path, dict]) -> None:
        graph = onnx.load(str(exported[1])).graph
        assert [i.name for i in graph.input] == [self.input_name]
        assert [o.name for o in graph.output] == list(self.output_names)
        for value in [*graph.input, *graph.output]:
            assert value.type.tensor_type.shape.dim[0].dim_param == "batch"

    def test_matches_eager_at_batch_1_and_3(self, exported: tuple[nn.Module, Path, dict]) -> None:
        _, _, diffs = exported
        assert set(diffs) == set(self.output_names)
        assert max(diffs.values()) < 1e-4


class TestMAUNetExport(MAUNetFamily, ExportParityContract):
    pass


class TestClassifierExport(ClassifierFamily, ExportParityContract):
    pass


class TestCombinedExport(CombinedFamily, ExportParityContract):
    pass


class TestDualStageExport(DualStageFamily, ExportParityContract):
    pass


class TestSingleBackboneExport(SingleBackboneFamily, ExportParityContract):
    pass


class TestCombinedDualStageExport(CombinedDualStageFamily, ExportParityContract):
    pass


class TestFoldEnsembleExport(FoldEnsembleFamily, ExportParityContract):
    """All 4 outputs (lesion_prob, class_prob, ood_score, seg_uncertainty) within 1e-4."""


class TestLayerProbeExport(LayerProbeFamily, ExportParityContract):
    """The probe's class probabilities, with the lesion map and the OOD score, within 1e-4."""


class TestLesionProbeExport(LesionProbeFamily, ExportParityContract):
    """A probe that also reads the lesion means: all three outputs within 1e-4."""


class _TracesDifferently(nn.Module):
    """Eager output changes with every call; the traced graph freezes the first value."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.conv(x) * float(self.calls)


def test_parity_failure_raises(tmp_path: Path) -> None:
    with pytest.raises(ParityError, match="parity check failed") as info:
        export_onnx(_TracesDifferently(), tmp_path / "m.onnx", 16, output_names=("out",))
    assert info.value.max_abs_diff > 1e-4


def test_output_name_count_must_match(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="returns 1 outputs"):
        export_onnx(MAUNet(base_width=4), tmp_path / "m.onnx", SIZE)


# --------------------------------------------------------------------------- bundle


def _bundle(tmp_path: Path) -> Path:
    onnx_path = tmp_path / "src" / "model.onnx"
    torch.manual_seed(0)
    net = FameNodeNet(MAUNet(base_width=4), LesionClassifier(widths=(4, 8)))
    export_onnx(net, onnx_path, SIZE)
    log = tmp_path / "src" / "training_log.json"
    log.write_text("{}")
    return write_bundle(
        tmp_path / "bundle",
        onnx_path,
        name="tiny",
        version="0.0.1",
        task="segmentation+classification",
        classes=["normal", "benign", "malignant"],
        inputs=[TensorSpec(name="image", shape=["batch", 1, SIZE, SIZE])],
        outputs=[
            TensorSpec(name="lesion_prob", shape=["batch", 1, SIZE, SIZE]),
            TensorSpec(name="class_prob", shape=["batch", 3]),
        ],
        preprocessing={"size": SIZE},
        postprocessing={"mask_threshold": 0.5},
        extra_files={"training_log.json": log},
    )


def test_write_bundle_verifies_and_detects_tampering(tmp_path: Path) -> None:
    out = _bundle(tmp_path)
    bundle = load_bundle(out)
    assert set(bundle.manifest.files) == {"model.onnx", "training_log.json"}
    assert bundle.manifest.preprocess_params().size == SIZE
    model = out / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_bundle(out)


def test_write_bundle_rejects_paths_outside(tmp_path: Path) -> None:
    src = tmp_path / "x.onnx"
    src.write_bytes(b"x")
    with pytest.raises(BundleError, match="relative path inside"):
        write_bundle(
            tmp_path / "b",
            src,
            name="n",
            version="1",
            task="t",
            classes=["a"],
            inputs=[],
            outputs=[],
            preprocessing={},
            extra_files={"../evil": src},
        )


def test_record_evaluation_adds_figures_and_refuses_a_signed_bundle(tmp_path: Path) -> None:
    import shutil

    from exporters.bundle import record_evaluation
    from tests.conftest import DEFAULT_BUNDLE

    bundle = tmp_path / "b"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    manifest = record_evaluation(bundle, "site_x", {"dice": 0.5, "n_cases": 3})
    assert manifest.evaluation["site_x"] == {"dice": 0.5, "n_cases": 3}
    assert load_bundle(bundle).manifest.evaluation["site_x"]["dice"] == 0.5  # still verifies
    (bundle / "manifest.sig").write_bytes(b"x" * 64)
    with pytest.raises(BundleError, match="is signed"):
        record_evaluation(bundle, "site_y", {"dice": 0.1})
