"""SEG and SR of real DICOM files (pydicom-data's ultrasound files, the node's phantoms):
built, written to the outbox, read back with pydicom / highdicom and compared."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from appliance.dicom_out import (
    DeviceInfo,
    DicomOutError,
    DicomOutInput,
    FrameResult,
    build_job_output,
    crop_from_stored,
    pad_to_stored,
    read_source,
    write_outbox,
)
from appliance.io.dicom import read_dicom
from appliance.io.sample_data import ultrasound_sample_files
from appliance.io.types import ImageMeta
from appliance.phantom import PhantomSpec, make_phantom
from appliance.phantom_dicom import (
    write_phantom_cine_dicom,
    write_phantom_dicom,
    write_phantom_png,
)

SAMPLES = ultrasound_sample_files()
DEVICE = DeviceInfo(serial_number="node-test-1")
MODEL = "fame-mau-net@1.0.0"


def _ellipse(h: int, w: int, seed: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    cy, cx = h * (0.4 + 0.02 * seed), w * 0.5
    inside = ((yy - cy) / (h / 5)) ** 2 + ((xx - cx) / (w / 4)) ** 2 <= 1
    return inside.astype(np.uint8) * 255


def _result(index: int, mask: np.ndarray, spacing: tuple[float, float] | None) -> FrameResult:
    area = float((mask > 0).sum())
    return FrameResult(
        frame_index=index,
        mask=mask,
        diagnosis="malignant" if index % 2 == 0 else "benign",
        probabilities={"normal": 0.1, "benign": 0.25, "malignant": 0.65},
        confidence=0.65,
        lesion_area_px=area,
        max_diameter_px=42.5 + index,
        lesion_area_mm2=area * spacing[0] * spacing[1] if spacing else None,
        max_diameter_mm=(42.5 + index) * spacing[0] if spacing else None,
        flags=("low_confidence", "uid_conflict") if index == 0 else (),
    )


def _check_written(
    paths: list[Path], source: Path, inp: DicomOutInput, crop: tuple[int, int, int, int] | None
) -> None:
    """Every property the PACS and a viewer rely on, read back from the files."""
    src = pydicom.dcmread(source, stop_before_pixels=True)
    multi = int(src.get("NumberOfFrames") or 1) > 1
    seg_paths = [p for p in paths if "-seg" in p.name]
    (sr_path,) = [p for p in paths if p.name.endswith("-sr.dcm")]
    assert len(seg_paths) == len(inp.frames)
    segs_by_frame = {}
    for path in seg_paths:
        assert path.name.startswith(f"job-{inp.job_id:06d}-seg")
        seg = hd.seg.segread(path)
        assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
        assert seg.SegmentationType == "BINARY"
        for kw in ("StudyInstanceUID", "PatientID", "PatientName", "AccessionNumber", "StudyID"):
            assert str(seg.get(kw, "")) == str(src.get(kw, "")), kw
        # An ACR-NEMA date "1994.11.05" is copied in DICOM form: the same date.
        assert str(seg.StudyDate) == str(src.get("StudyDate", "")).replace(".", "")
        assert seg.get("FrameOfReferenceUID") == src.get("FrameOfReferenceUID")
        assert seg.SeriesInstanceUID != src.SeriesInstanceUID
        ref = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
        ref = ref.SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert ref.ReferencedSOPClassUID == src.SOPClassUID
        (series,) = seg.ReferencedSeriesSequence
        assert series.SeriesInstanceUID == src.SeriesInstanceUID
        assert series.ReferencedInstanceSequence[0].ReferencedSOPClassUID == src.SOPClassUID
        algo = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
        assert algo.AlgorithmVersion == MODEL and algo.AlgorithmName == "FAME Node MAU-Net"
        assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "4147007"
        if multi:
            frame_number = int(ref.ReferencedFrameNumber)
            pixels = seg.get_pixels_by_source_frame(src.SOPInstanceUID, [frame_number])[0, ..., 0]
        else:
            assert "ReferencedFrameNumber" not in ref
            frame_number = 1
            pixels = seg.get_pixels_by_source_instance([src.SOPInstanceUID])[0, ..., 0]
        assert pixels.shape == (src.Rows, src.Columns)
        segs_by_frame[frame_number - 1] = seg
        expected = next(f for f in inp.frames if f.frame_index == frame_number - 1).mask > 0
        inside = crop_from_stored(pixels, crop)
        assert np.array_equal(inside.astype(bool), expected)  # pixel exact in the crop
        assert int(pixels.sum()) == int(expected.sum())  # and nothing outside it
    assert sorted(segs_by_frame) == sorted(f.frame_index for f in inp.frames)

    sr = hd.sr.srread(sr_path)
    assert sr.StudyInstanceUID == src.StudyInstanceUID and sr.VerificationFlag == "UNVERIFIED"
    assert sr.PatientID == src.get("PatientID", "")
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == len(inp.frames)
    calibrated = inp.meta.pixel_spacing_mm is not None
    for group, result in zip(groups, sorted(inp.frames, key=lambda f: f.frame_index), strict=True):
        seg = segs_by_frame[result.frame_index]
        seg_ref = group.referenced_segmentation_frame
        assert seg_ref is not None
        assert seg_ref[0].referenced_sop_instance_uid == seg.SOPInstanceUID
        assert seg_ref[0].ReferencedSOPSequence[0].ReferencedSegmentNumber == 1
        src_ref = seg_ref[1].ReferencedSOPSequence[0]
        assert src_ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
        if multi:
            assert int(src_ref.ReferencedFrameNumber) == result.frame_index + 1
        (area,) = group.get_measurements(name=codes.SCT.Area)
        (diameter,) = group.get_measurements(name=codes.SCT.LongAxis)
        if calibrated:
            assert area.value == pytest.approx(result.lesion_area_mm2)
            assert diameter.value == pytest.approx(result.max_diameter_mm)
            assert area.unit.value == "mm2" and diameter.unit.value == "mm"
        else:
            assert area.value == pytest.approx(result.lesion_area_px)
            assert diameter.value == pytest.approx(result.max_diameter_px)
            assert area.unit.value == "{pixels^2}" and diameter.unit.value == "{pixels}"
        for label, p in result.probabilities.items():
            (m,) = [
                x for x in group.get_measurements() if x.name.meaning == f"Probability of {label}"
            ]
            assert m.value == pytest.approx(p)
        evaluations = {
            (q.name.meaning, q.value.meaning) for q in group.get_qualitative_evaluations()
        }
        assert ("AI classification", result.diagnosis.capitalize()) in evaluations
        assert {v for n, v in evaluations if n == "Review flag"} == set(result.flags)
    _dciodvfy(paths)


def _dciodvfy(paths: list[Path]) -> None:
    tool = shutil.which("dciodvfy")
    if tool is None:
        return  # dicom3tools is not installed here; highdicom's construction checks stand
    for path in paths:
        out = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=30)
        errors = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]
        assert not errors, f"{path.name}: {errors}"


def test_pad_to_stored_puts_the_mask_at_the_crop_offset() -> None:
    mask = np.zeros((4, 6), np.uint8)
    mask[1, 2] = 255
    full = pad_to_stored(mask, (3, 5, 9, 9), rows=12, columns=10)
    assert full.shape == (12, 10) and full.dtype == bool
    assert list(zip(*np.nonzero(full), strict=True)) == [(6, 5)]
    assert np.array_equal(crop_from_stored(full, (3, 5, 9, 9)), mask > 0)
    assert np.array_equal(
        pad_to_stored(np.full((12, 10), 255, np.uint8), None, 12, 10), full | ~full
    )


@pytest.mark.parametrize(
    ("shape", "crop", "expected"),
    [((4, 5), (3, 5, 9, 9), "crop"), ((4, 6), (3, 5, 11, 9), "does not lie"), ((4,), None, "2-D")],
)
def test_pad_to_stored_refuses_a_mask_that_does_not_fit(shape, crop, expected) -> None:
    with pytest.raises(DicomOutError, match=expected):
        pad_to_stored(np.zeros(shape, np.uint8), crop, rows=12, columns=10)


@pytest.mark.skipif(not SAMPLES, reason="pydicom-data is not installed (the demo extra)")
@pytest.mark.parametrize("path", SAMPLES, ids=[p.name for p in SAMPLES])
def test_seg_and_sr_of_each_pydicom_data_ultrasound_file(path: Path, tmp_path: Path) -> None:
    header = pydicom.dcmread(path, stop_before_pixels=True)
    rows, cols, n = int(header.Rows), int(header.Columns), int(header.get("NumberOfFrames") or 1)
    crop = (cols // 8, rows // 10, cols - cols // 8, rows - rows // 12)
    indices = (0,) if n == 1 else (0, n - 1)
    h, w = crop[3] - crop[1], crop[2] - crop[0]
    frames = tuple(_result(i, _ellipse(h, w, i), None) for i in indices)
    meta = ImageMeta(source_format="dicom", crop=crop, n_frames_total=n, frame_indices=indices)
    inp = DicomOutInput(7, path, meta, frames, MODEL, DEVICE)
    paths = write_outbox(tmp_path / "outbox", inp.job_id, build_job_output(inp).datasets)
    _check_written(paths, path, inp, crop)


@pytest.mark.parametrize("cine", [False, True], ids=["still", "cine"])
def test_phantom_with_a_known_lesion_through_the_node_reader(tmp_path: Path, cine: bool) -> None:
    phantoms = [make_phantom(PhantomSpec(height=160, width=200, semi_axes_px=(40, 25), seed=s))
                for s in (3, 4, 5)]  # fmt: skip
    path = tmp_path / "phantom.dcm"
    ids = {"patient_id": "PAT-001", "patient_name": "Doe^Jane", "pixel_spacing_mm": 0.1}
    if cine:
        write_phantom_cine_dicom(path, phantoms, **ids)
    else:
        write_phantom_dicom(path, phantoms[0], **ids)
    meta = read_dicom(path).meta  # the crop and spacing as the node finds them
    assert meta.crop is not None and meta.pixel_spacing_mm == pytest.approx((0.1, 0.1))
    frames = tuple(
        _result(i, phantoms[i].mask * 255, meta.pixel_spacing_mm) for i in meta.frame_indices
    )
    assert frames[0].mask.shape == (meta.crop[3] - meta.crop[1], meta.crop[2] - meta.crop[0])
    inp = DicomOutInput(12, path, meta, frames, MODEL, DEVICE)
    paths = write_outbox(tmp_path / "outbox", 12, build_job_output(inp).datasets)
    expected = ["job-000012-sr.dcm"] + (
        [f"job-000012-seg-frame_{i:03d}.dcm" for i in (0, 1, 2)] if cine else ["job-000012-seg.dcm"]
    )
    assert sorted(p.name for p in paths) == sorted(expected)
    assert sorted(p.name for p in (tmp_path / "outbox").iterdir()) == sorted(expected)  # no temp
    _check_written(paths, path, inp, meta.crop)


def test_png_and_other_non_dicom_sources_are_refused(tmp_path: Path) -> None:
    png = tmp_path / "scan.png"
    write_phantom_png(png, make_phantom(PhantomSpec(height=64, width=64, seed=1)))
    with pytest.raises(DicomOutError, match="not a DICOM file"):
        read_source(png)
    with pytest.raises(DicomOutError, match="PNG image, not DICOM"):
        read_source(png, ImageMeta(source_format="png"))


def test_a_source_without_study_uid_or_of_another_image_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "phantom.dcm"
    write_phantom_dicom(path, make_phantom(PhantomSpec(height=64, width=64)), pixel_spacing_mm=0.1,
                        patient_id="P", patient_name="A^B")  # fmt: skip
    meta = read_dicom(path).meta
    with pytest.raises(DicomOutError, match=r"analysed 1\.2\.3"):
        read_source(path, dataclasses.replace(meta, sop_instance_uid="1.2.3"))
    ds = pydicom.dcmread(path)
    del ds.StudyInstanceUID
    ds.save_as(path)
    with pytest.raises(DicomOutError, match="no StudyInstanceUID"):
        read_source(path, meta)


def test_results_of_frames_not_analysed_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "phantom.dcm"
    phantom = make_phantom(PhantomSpec(height=64, width=64))
    write_phantom_dicom(path, phantom, pixel_spacing_mm=0.1, patient_id="P", patient_name="A^B")
    meta = read_dicom(path).meta
    inp = DicomOutInput(1, path, meta, (_result(3, phantom.mask * 255, None),), MODEL, DEVICE)
    with pytest.raises(DicomOutError, match=r"frames \[3\]"):
        build_job_output(inp)
    empty = dataclasses.replace(
        inp, frames=(_result(0, phantom.mask * 255, None),), model_version=" "
    )
    with pytest.raises(DicomOutError, match="model_version is empty"):
        build_job_output(empty)


def test_outbox_takes_seg_and_sr_only_and_names_by_job(tmp_path: Path) -> None:
    ds = pydicom.Dataset()
    ds.Modality = "US"
    with pytest.raises(DicomOutError, match="SEG and SR datasets only"):
        write_outbox(tmp_path, 1, [ds])
    assert not list(tmp_path.iterdir())


def test_every_flag_the_node_shows_has_a_dicom_code_value() -> None:
    # The SR codes each review flag; a Code Value is at most 16 characters. A flag that did
    # not fit ("out_of_distribution") once cost a job its SEG and SR.
    from appliance.app.display import FLAG_LABELS
    from appliance.dicom_out.sr import flag_code

    codes = {flag: flag_code(flag).value for flag in [*FLAG_LABELS, "a_flag_from_a_newer_node_x"]}
    assert all(len(c) <= 16 for c in codes.values()), codes
    assert len(set(codes.values())) == len(codes)  # no two flags share a code
    assert codes["out_of_distribution"] == "OUT-OF-DISTRIB"
