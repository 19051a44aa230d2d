"""The DICOM-out stage through the real pipeline: a DICOM job's SEG and SR are in the outbox
before the job is done, match the node's own mask and results, and are left out where they
could mislead (a SOP Instance UID another image carries) or have no DICOM context (PNG)."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image

from appliance.phantom import PhantomSpec, make_phantom
from appliance.phantom_dicom import write_phantom_dicom, write_phantom_png
from appliance.store.jobs import JobStatus
from tests.appliance.pipelineutil import node_parts, process_file


def _dicom(path: Path, seed: int, patient: str, uid: str | None = None) -> Path:
    spec = PhantomSpec(height=300, width=400, semi_axes_px=(70, 45), seed=seed)
    write_phantom_dicom(
        path, make_phantom(spec), pixel_spacing_mm=0.1, patient_id=patient, patient_name="T^P"
    )
    if uid is not None:
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.save_as(path, enforce_file_format=True)
    return path


def test_a_dicom_job_gets_its_seg_and_sr_before_it_is_done(tmp_path: Path) -> None:
    parts = node_parts(tmp_path / "node", workers=1)
    source = _dicom(tmp_path / "us.dcm", seed=61, patient="PAT-1")
    job_id = process_file(parts, source)
    job = parts.queue.get(job_id)
    assert job.status is JobStatus.DONE, job.reason
    outbox = tmp_path / "node" / "outbox"
    names = sorted(p.name for p in outbox.iterdir())
    assert names == [f"job-{job_id:06d}-seg.dcm", f"job-{job_id:06d}-sr.dcm"]
    (row,) = parts.results.results_for_job(job_id)
    result = json.loads((Path(str(row.result_dir)) / "result.json").read_text())
    assert sorted(result["dicom_out"]) == names

    src = pydicom.dcmread(source, stop_before_pixels=True)
    seg = hd.seg.segread(outbox / names[0])
    assert seg.PatientID == "PAT-1" and seg.StudyInstanceUID == src.StudyInstanceUID
    assert (
        seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        == src.SOPInstanceUID
    )
    # The SEG over the whole stored image, cropped to the ultrasound region, is the node's mask.
    full = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[src.SOPInstanceUID], segment_numbers=[1]
    )[0, :, :, 0]
    meta = parts.results.image_meta(job_id)
    assert meta is not None and meta.crop is not None
    x0, y0, x1, y1 = meta.crop
    node_mask = np.asarray(Image.open(Path(str(row.result_dir)) / "frame_000_mask.png")) > 0
    assert np.array_equal(full[y0:y1, x0:x1] > 0, node_mask)
    assert not full[:y0].any() and not full[y1:].any()
    sr = pydicom.dcmread(outbox / names[1])
    assert sr.PatientID == "PAT-1" and sr.VerificationFlag == "UNVERIFIED"


def test_no_seg_for_a_png_or_for_an_image_whose_uid_another_carries(tmp_path: Path) -> None:
    parts = node_parts(tmp_path / "node", workers=1)
    outbox = tmp_path / "node" / "outbox"
    png = tmp_path / "a.png"
    write_phantom_png(png, make_phantom(PhantomSpec(seed=62)))
    assert parts.queue.get(process_file(parts, png)).status is JobStatus.DONE
    assert list(outbox.iterdir()) == []  # no DICOM context: nothing for the PACS

    uid = "1.2.826.0.1.3680043.10.511.3.77"
    first = process_file(parts, _dicom(tmp_path / "a.dcm", seed=63, patient="PAT-A", uid=uid))
    second = process_file(parts, _dicom(tmp_path / "b.dcm", seed=64, patient="PAT-B", uid=uid))
    assert parts.queue.get(second).conflict_of == first
    names = sorted(p.name for p in outbox.iterdir())
    assert names == [f"job-{first:06d}-seg.dcm", f"job-{first:06d}-sr.dcm"]  # none for b
    meta = parts.results.image_meta(second)
    assert meta is not None and any("no DICOM SEG / SR written" in n for n in meta.notes)


def test_dicom_out_can_be_turned_off(tmp_path: Path) -> None:
    parts = node_parts(tmp_path / "node", FAME_NODE_DICOM_OUT__ENABLED="false", workers=1)
    job_id = process_file(parts, _dicom(tmp_path / "us.dcm", seed=65, patient="PAT-1"))
    assert parts.queue.get(job_id).status is JobStatus.DONE
    assert list((tmp_path / "node" / "outbox").iterdir()) == []
