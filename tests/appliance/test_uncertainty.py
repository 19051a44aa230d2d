"""A fold-ensemble bundle on the node: a real ONNX Runtime session gives the fold
disagreement (seg_uncertainty), the Analyzer raises ``high_uncertainty`` above the bundle's
threshold (NaN too), result.json and the store (schema v7) keep the score, the SR carries
the flag, the GUI's text shows it; bundles without the output run as before."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest

from appliance.analysis import Analyzer
from appliance.app.display import FLAG_HELP, confidence_text, flag_label
from appliance.bundle import load_bundle
from appliance.config import RuntimeConfig, ThresholdsConfig
from appliance.postprocess import above
from appliance.runtime import create_backend
from appliance.runtime.base import InferenceBackend, ModelOutputs
from appliance.store.db import connect, migrate
from appliance.store.schema import MIGRATIONS
from tests.appliance.pipelineutil import node_parts, process_file
from tests.exporters.tinybundle import make_tiny_bundle
from tests.trainer.foldbundle import export_tiny, tiny_fold_net, tiny_single_net

FLAG = "high_uncertainty"


@pytest.fixture(scope="module")
def fold_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny(tiny_fold_net(), tmp_path_factory.mktemp("folds"))


def _frames() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    smooth = rng.integers(60, 120, (48, 64)).astype(np.uint8)
    checker = (np.indices((48, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    disc = np.full((40, 40), 40, np.uint8)
    disc[10:25, 12:30] = 200
    return [smooth, checker, disc]


def _analyzer(bundle_dir: Path) -> Analyzer:
    bundle = load_bundle(bundle_dir)
    return Analyzer(
        bundle, create_backend(bundle, RuntimeConfig(backend="onnxruntime-cpu")), ThresholdsConfig()
    )


def test_the_onnx_runtime_session_gives_the_score_and_the_flag_follows_the_threshold(
    fold_bundle: Path,
) -> None:
    analyzer = _analyzer(fold_bundle)
    threshold = load_bundle(fold_bundle).manifest.postprocessing["uncertainty_threshold"]
    assert analyzer.uncertainty_threshold == threshold
    results = analyzer.analyse(_frames(), None)
    scores = [r.seg_uncertainty for r in results]
    assert all(s is not None and 0.0 <= s <= 1.0 for s in scores), scores
    for r in results:
        assert (FLAG in r.diagnosis.flags) == (r.seg_uncertainty > threshold)
    known = [s for s in scores if s is not None]
    analyzer.uncertainty_threshold = min(known) / 2
    assert all(FLAG in r.diagnosis.flags for r in analyzer.analyse(_frames(), None))
    analyzer.uncertainty_threshold = max(known) * 2
    assert not any(FLAG in r.diagnosis.flags for r in analyzer.analyse(_frames(), None))


class _NaNUncertainty:
    """The real backend, with the disagreement replaced by NaN (a failed computation)."""

    def __init__(self, inner: InferenceBackend) -> None:
        self.inner, self.name, self.device = inner, inner.name, inner.device

    def infer(self, batch: np.ndarray) -> ModelOutputs:
        out = self.inner.infer(batch)
        return replace(out, seg_uncertainty=np.full(len(batch), np.nan, np.float32))


def test_a_nan_score_is_flagged(fold_bundle: Path) -> None:
    analyzer = _analyzer(fold_bundle)
    analyzer.backend = _NaNUncertainty(analyzer.backend)
    (result,) = analyzer.analyse(_frames()[:1], None)
    assert result.seg_uncertainty is not None and math.isnan(result.seg_uncertainty)
    assert FLAG in result.diagnosis.flags
    assert above(float("nan"), 0.5) and not above(None, 0.5) and not above(0.9, None)
    assert above(0.51, 0.5) and not above(0.5, 0.5)


@pytest.mark.parametrize("kind", ["3 outputs (OOD)", "2 outputs (oldest)"])
def test_bundles_without_the_output_run_unchanged(tmp_path: Path, kind: str) -> None:
    path = (
        export_tiny(tiny_single_net(), tmp_path, "tiny-one")
        if kind.startswith("3")
        else make_tiny_bundle(tmp_path / "old")
    )
    analyzer = _analyzer(path)
    assert analyzer.uncertainty_threshold is None
    for r in analyzer.analyse(_frames(), None):
        assert r.seg_uncertainty is None and FLAG not in r.diagnosis.flags


def test_result_json_and_the_store_keep_the_score(fold_bundle: Path, tmp_path: Path) -> None:
    from appliance.phantom import PhantomSpec, make_phantom
    from appliance.phantom_dicom import write_phantom_png

    parts = node_parts(tmp_path / "node", FAME_NODE_MODELS__BUNDLE=str(fold_bundle))
    assert parts.bundle.manifest.name == "tiny-folds"
    parts.pipeline.analyzer.uncertainty_threshold = 0.0  # every frame flagged
    path = tmp_path / "case.png"
    write_phantom_png(path, make_phantom(PhantomSpec(seed=4)))
    job_id = process_file(parts, path)
    (row,) = parts.results.results_for_job(job_id)
    assert row.seg_uncertainty is not None and 0.0 < row.seg_uncertainty <= 1.0
    assert FLAG in row.flags
    record = json.loads((Path(str(row.result_dir)) / "result.json").read_text())
    (frame,) = record["frames"]
    assert frame["seg_uncertainty"] == pytest.approx(row.seg_uncertainty)
    assert FLAG in frame["flags"]


def test_store_migration_v7_adds_the_column_and_keeps_older_rows(tmp_path: Path) -> None:
    db = tmp_path / "node.sqlite3"
    conn = connect(db, migrations=MIGRATIONS[:6])  # a store as the previous node left it
    now = "2026-12-01T00:00:00+00:00"
    conn.execute(
        "INSERT INTO jobs (path, status, created_at, updated_at) VALUES ('a', 'done', ?, ?)",
        (now, now),
    )
    conn.execute(
        "INSERT INTO results (job_id, frame_index, probabilities, flags, created_at) "
        "VALUES (1, 0, '{}', '[]', ?)",
        (now,),
    )
    conn.close()
    conn = connect(db)  # opens and migrates to the latest version
    try:
        assert migrate(conn, db) == 7
        columns = {r[1] for r in conn.execute("PRAGMA table_info(results)")}
        assert "seg_uncertainty" in columns
        assert conn.execute("SELECT seg_uncertainty FROM results").fetchone()[0] is None
    finally:
        conn.close()


def test_the_sr_carries_the_flag(tmp_path: Path) -> None:
    from appliance.dicom_out import DeviceInfo, DicomOutInput, FrameResult, build_job_output
    from appliance.io.dicom import read_dicom
    from appliance.phantom import PhantomSpec, make_phantom
    from appliance.phantom_dicom import write_phantom_dicom

    phantom = make_phantom(PhantomSpec(height=160, width=200, semi_axes_px=(40, 25), seed=3))
    path = tmp_path / "phantom.dcm"
    write_phantom_dicom(
        path, phantom, patient_id="PAT-1", patient_name="Doe^Jane", pixel_spacing_mm=0.1
    )
    meta = read_dicom(path).meta
    frame = FrameResult(
        frame_index=0,
        mask=phantom.mask * 255,
        diagnosis="benign",
        probabilities={"normal": 0.1, "benign": 0.7, "malignant": 0.2},
        confidence=0.7,
        lesion_area_px=float(phantom.mask.sum()),
        max_diameter_px=40.0,
        lesion_area_mm2=float(phantom.mask.sum()) * 0.01,
        max_diameter_mm=4.0,
        flags=(FLAG,),
    )
    inp = DicomOutInput(3, path, meta, (frame,), "tiny-folds@0.0.1", DeviceInfo("node-1"))
    (sr,) = [d for d in build_job_output(inp).datasets if d.Modality == "SR"]
    sr = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_bytes(sr)))
    values = {e.value for e in sr.iterall() if e.keyword == "CodeValue"}
    assert "HIGH-UNCERTAINTY" in values


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def test_the_gui_text_shows_the_score_beside_the_confidence_and_names_the_flag() -> None:
    assert confidence_text(0.874) == "87 % confidence"
    assert confidence_text(0.874, 0.1234) == "87 % confidence\noutline uncertainty 0.12"
    assert confidence_text(0.5, float("nan")).endswith("outline uncertainty not computed")
    assert confidence_text(None, 0.3) == ""
    assert flag_label(FLAG) == "Uncertain outline"
    assert "fold models" in FLAG_HELP[FLAG]


def test_evaluate_reports_the_score_against_the_dice_error() -> None:
    from appliance.evaluate import CaseOutputs, spearman, uncertainty_figures

    assert spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2, 3], [5, 5, 6, 7]) == pytest.approx(1.0)  # ties share ranks
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 1, 1], [1, 2, 3]) is None
    truth = np.zeros((8, 8), np.uint8)
    truth[2:6, 2:6] = 1
    preds = []
    for shift in range(4):  # the further off the mask, the higher the model's uncertainty
        p = np.zeros((8, 8), np.uint8)
        p[2 + shift : 6 + shift, 2:6] = 1
        preds.append(p)
    out = CaseOutputs(
        preds=[*preds, np.zeros((8, 8), np.uint8)],
        truths=[truth] * 4 + [np.zeros((8, 8), np.uint8)],
        uncertainties=[0.1, 0.2, 0.3, 0.4, 0.05],
        flagged_uncertain=[False, False, True, True, False],
    )
    fig = uncertainty_figures(out)
    assert fig is not None
    assert fig["spearman_vs_dice_error"] == pytest.approx(1.0)
    assert fig["n_with_lesion"] == 4 and fig["flagged_high_uncertainty"] == pytest.approx(0.4)
    assert fig["median"] == pytest.approx(0.2)
    assert uncertainty_figures(CaseOutputs(uncertainties=[None])) is None
