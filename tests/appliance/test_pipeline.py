"""The pipeline stage in-process: real readers, real store, real ONNX Runtime session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance.config import load_config
from appliance.cpus import usable_cpus
from appliance.io.sample_data import ultrasound_sample_files
from appliance.phantom import PhantomSpec, make_phantom
from appliance.phantom_dicom import write_phantom_dicom
from appliance.preprocess import letterbox_mask
from appliance.runtime.base import ModelOutputs
from appliance.service import build_parts
from appliance.store.jobs import JobStatus
from tests.appliance.pipelineutil import node_parts, process_file

needs_pydicom_data = pytest.mark.skipif(
    not ultrasound_sample_files(), reason="pydicom-data is not installed (pip install '.[demo]')"
)


EXPECTED_FRAMES = {"OBXXXX1A_2frame.dcm": 2, "color3d_jpeg_baseline.dcm": 16}


@needs_pydicom_data
@pytest.mark.parametrize("sample", ultrasound_sample_files(), ids=lambda p: p.name)
def test_every_ultrasound_sample_is_processed_on_its_own(tmp_path: Path, sample: Path) -> None:
    parts = node_parts(tmp_path)  # a fresh store: no SOP-UID duplicate can hide a decoder
    job_id = process_file(parts, sample)
    job = parts.queue.get(job_id)
    assert job.status is JobStatus.DONE, job.reason
    rows = parts.results.results_for_job(job_id)
    assert len(rows) == EXPECTED_FRAMES.get(sample.name.replace("_expb", "").replace("_rle", ""), 1)
    meta = parts.results.image_meta(job_id)
    assert meta is not None and meta.modality == "US"
    for r in rows:
        assert abs(sum(r.probabilities.values()) - 1.0) < 1e-3
        assert (r.lesion_area_mm2 is None) == (meta.pixel_spacing_mm is None)
        out = Path(str(r.result_dir))
        assert (out / f"frame_{r.frame_index:03d}_overlay.png").is_file()
    assert (Path(str(rows[0].result_dir)) / "result.json").is_file()


class OracleBackend:
    """Returns a known lesion map: isolates the measurement path from the model's skill."""

    name = "oracle"
    device = "test"

    def __init__(self, mask_in_input: np.ndarray, n_classes: int = 3) -> None:
        self.mask = mask_in_input.astype(np.float32)
        self.n_classes = n_classes

    def infer(self, batch: np.ndarray) -> ModelOutputs:
        n = batch.shape[0]
        probs = np.tile(np.array([[0.05, 0.15, 0.8]], np.float32), (n, 1))
        return ModelOutputs(np.repeat(self.mask[None], n, axis=0), probs)


def test_lesion_size_in_mm_from_a_calibrated_dicom(tmp_path: Path) -> None:
    spec = PhantomSpec(height=300, width=400, semi_axes_px=(70, 45), seed=5)
    ph = make_phantom(spec)
    path = tmp_path / "phantom.dcm"
    spacing = 0.08  # mm per pixel
    write_phantom_dicom(
        path,
        ph,
        pixel_spacing_mm=spacing,
        patient_id="P1",
        patient_name="Test^Phantom",
        region_offset=(30, 50),
        canvas=(400, 480),
    )
    parts = node_parts(tmp_path / "node")
    size = parts.pipeline.analyzer.params.size
    parts.pipeline.analyzer.backend = OracleBackend(letterbox_mask(ph.mask, size))
    job_id = process_file(parts, path)
    assert parts.queue.get(job_id).status is JobStatus.DONE
    (r,) = parts.results.results_for_job(job_id)
    truth_mm2 = ph.area_px * spacing * spacing
    assert r.lesion_area_mm2 == pytest.approx(truth_mm2, rel=0.05)
    assert r.max_diameter_mm == pytest.approx(ph.max_diameter_px * spacing, rel=0.05)
    assert r.diagnosis == "malignant" and r.flags == ()


@needs_pydicom_data
def test_same_sop_instance_in_another_encoding_is_a_duplicate(tmp_path: Path) -> None:
    files = {p.name: p for p in ultrasound_sample_files()}
    parts = node_parts(tmp_path)
    first = process_file(parts, files["OBXXXX1A.dcm"])
    second = process_file(parts, files["OBXXXX1A_rle.dcm"])  # other bytes, same SOP Instance UID
    assert parts.queue.get(first).status is JobStatus.DONE
    dup = parts.queue.get(second)
    assert dup.status is JobStatus.DUPLICATE and dup.duplicate_of == first
    assert parts.results.results_for_job(second) == []


def test_a_file_removed_after_it_was_queued_is_analysed_from_the_nodes_copy(
    tmp_path: Path,
) -> None:
    from appliance.phantom_dicom import write_phantom_png

    parts = node_parts(tmp_path / "node")
    path = tmp_path / "gone.png"
    write_phantom_png(path, make_phantom(PhantomSpec(seed=3)))
    outcome = parts.intake.submit(path, inside_inbox=False)
    path.unlink()
    job = parts.queue.claim(outcome.id)
    assert job is not None
    parts.pipeline.process(job)
    final = parts.queue.get(outcome.id)
    assert final.status is JobStatus.DONE, final.reason
    assert final.spool_path is None  # the copy is released once the job is done


def test_internal_error_fails_the_job_and_the_next_one_still_runs(tmp_path: Path) -> None:
    from appliance.phantom_dicom import write_phantom_png

    parts = node_parts(tmp_path / "node")
    real_backend = parts.pipeline.analyzer.backend

    class Broken:
        name, device = "broken", "test"

        def infer(self, batch: np.ndarray) -> ModelOutputs:
            raise RuntimeError("GPU fell off the bus")

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    write_phantom_png(a, make_phantom(PhantomSpec(seed=1)))
    write_phantom_png(b, make_phantom(PhantomSpec(seed=2)))
    parts.pipeline.analyzer.backend = Broken()
    failed = process_file(parts, a)
    parts.pipeline.analyzer.backend = real_backend
    ok = process_file(parts, b)
    job = parts.queue.get(failed)
    assert job.status is JobStatus.FAILED and "GPU fell off the bus" in str(job.reason)
    assert parts.queue.get(ok).status is JobStatus.DONE
    assert a.exists()  # the input is never touched


def test_a_one_after_another_caller_gives_inference_every_cpu(tmp_path: Path) -> None:
    config = load_config(
        env={"FAME_NODE_PATHS__ROOT": str(tmp_path), "FAME_NODE_PROCESSING__WORKERS": "2"}
    )
    serial = build_parts(config, workers=1).backend
    service = build_parts(config).backend  # two workers share the CPUs
    assert serial.intra_op_threads == usable_cpus()  # type: ignore[attr-defined]
    assert service.intra_op_threads == max(1, usable_cpus() // 2)  # type: ignore[attr-defined]
