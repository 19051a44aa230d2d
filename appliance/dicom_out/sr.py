"""Pure builder of the job's Structured Report: TID 1500 Measurement Report, one per image.

One SR per source image, holding one TID 1410 Planar ROI measurement group per analysed
frame, each referencing that frame's SEG segment (and through it the source frame):

- qualitative evaluations: "AI classification" (99FAMENODE; DCM 121071 "Finding" is taken:
  highdicom writes the finding type, "Mass", under it) = the diagnosis, coded SCT 17621005
  "Normal", SCT 30807003 "Benign" or SCT 21594007 "Malignant" (qualifier values, as in
  pydicom's DICOM code dictionary); a class name outside these is coded in the node's
  private scheme 99FAMENODE; each review flag (low_confidence, segmentation_disagrees,
  uid_conflict ...) as "Review flag" = the flag, in 99FAMENODE;
- measurements: SCT 42798000 "Area" and SCT 103339001 "Long axis" (the largest in-plane
  diameter, the name RECIST-style reports and highdicom's examples give it), in mm2 / mm
  when the image is calibrated, else in pixels (UCUM annotations "{pixels}", "{pixels^2}",
  never mistaken for a physical unit); one "Probability of <class>" per class (99FAMENODE,
  unit UCUM "1"); each with the algorithm (name and model version).

That the content is an AI finding for clinician review is said the DICOM way: the
observer is a device (the algorithm, with the model version), Verification Flag is
UNVERIFIED, and the series description says so. The private scheme is declared in the
Coding Scheme Identification Sequence.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from appliance.dicom_out.errors import DicomOutError
from appliance.dicom_out.seg import ALGORITHM_NAME, quiet_names
from appliance.dicom_out.source import DeviceInfo, FrameResult, finite_or_none, n_frames

SR_SERIES_NUMBER = 9902
PRIVATE_SCHEME = "99FAMENODE"

DIAGNOSIS_CODES: dict[str, hd.sr.CodedConcept] = {
    "normal": hd.sr.CodedConcept.from_code(codes.SCT.Normal),
    "benign": hd.sr.CodedConcept.from_code(codes.SCT.Benign),
    "malignant": hd.sr.CodedConcept.from_code(codes.SCT.Malignant),
}
_FLAG_CODES = {  # Code Value is SH (16 characters): short fixed codes for the known flags
    "low_confidence": "LOW-CONFIDENCE",
    "segmentation_disagrees": "SEG-DISAGREES",
    "uid_conflict": "UID-CONFLICT",
    "out_of_distribution": "OUT-OF-DISTRIB",
    "ensemble_disagrees": "ENS-DISAGREES",
    "frames_disagree": "FRAMES-DISAGREE",
    "high_uncertainty": "HIGH-UNCERTAINTY",  # the fold ensemble disagrees on the lesion map
}
_CLASSIFICATION = hd.sr.CodedConcept("AI-CLASS", PRIVATE_SCHEME, "AI classification")
_REVIEW_FLAG = hd.sr.CodedConcept("REVIEW-FLAG", PRIVATE_SCHEME, "Review flag")
_PIXELS = hd.sr.CodedConcept("{pixels}", "UCUM", "pixels")
_SQUARE_PIXELS = hd.sr.CodedConcept("{pixels^2}", "UCUM", "square pixels")
_NO_UNITS = hd.sr.CodedConcept.from_code(codes.UCUM.NoUnits)


def private_code(value: str, meaning: str) -> hd.sr.CodedConcept:
    if len(value) > 16:
        raise DicomOutError(
            f"'{value}' is too long for a DICOM code value (16 characters at most): use "
            "a shorter class or flag name in the bundle"
        )
    return hd.sr.CodedConcept(value, PRIVATE_SCHEME, meaning)


def diagnosis_code(label: str) -> hd.sr.CodedConcept:
    """The diagnosis as a standard code where one fits, else a private one."""
    return DIAGNOSIS_CODES.get(label.lower()) or private_code(label.upper(), label)


def flag_code(flag: str) -> hd.sr.CodedConcept:
    """The flag's fixed short code; a flag without one (a newer node) gets a stable code of
    at most 16 characters, so an unknown flag never costs the SEG and SR."""
    code = _FLAG_CODES.get(flag, flag.upper())
    if len(code) > 16:
        digest = hashlib.sha256(flag.encode()).hexdigest()[:4].upper()
        code = f"{code[:11]}-{digest}"
    return private_code(code, flag)


def probability_name(label: str) -> hd.sr.CodedConcept:
    return private_code(f"P-{label.upper()}", f"Probability of {label}")


def build_sr(
    source: Dataset,
    frames: Sequence[FrameResult],
    segs: Sequence[hd.seg.Segmentation],
    *,
    model_version: str,
    device: DeviceInfo,
    calibrated: bool,
) -> hd.sr.Comprehensive3DSR:
    """The SR of one image: a measurement group per analysed frame, in frame order.

    `segs` are `build_segs`'s, one per frame in the same (frame index) order; `calibrated`
    says whether the mm values are real (`ImageMeta.pixel_spacing_mm` is not None).

    Raises:
        DicomOutError: frames and SEGs do not pair up, a value is not finite, or highdicom
            refuses the content (its message kept in `reason`).
    """
    ordered = sorted(frames, key=lambda f: f.frame_index)
    if len(ordered) != len(segs) or not ordered:
        raise DicomOutError(f"{len(ordered)} frame results for {len(segs)} SEGs: pass one each")
    algorithm = hd.sr.AlgorithmIdentification(name=ALGORITHM_NAME, version=model_version)
    multi = n_frames(source) > 1
    groups = [
        _frame_group(source, f, seg, algorithm, calibrated=calibrated, multi=multi)
        for f, seg in zip(ordered, segs, strict=True)
    ]
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            # Stable per node: the same device is the same observer in every report.
            uid=generate_uid(entropy_srcs=[device.manufacturer, device.serial_number]),
            name=ALGORITHM_NAME,
            manufacturer_name=device.manufacturer,
            model_name=model_version,
            serial_number=device.serial_number,
        ),
    )
    try:
        with quiet_names():
            report = hd.sr.MeasurementReport(
                observation_context=hd.sr.ObservationContext(observer_device_context=observer),
                procedure_reported=codes.SCT.UltrasonographyOfBreast,
                imaging_measurements=groups,
            )
            return hd.sr.Comprehensive3DSR(
                # A SEG first: highdicom copies patient / study from evidence[0] by its
                # IOD, which it lacks for the retired 1993 ultrasound classes; the SEG
                # holds the same identifiers, copied from the source.
                evidence=[*segs, source],
                content=report,
                series_instance_uid=hd.UID(),
                series_number=SR_SERIES_NUMBER,
                sop_instance_uid=hd.UID(),
                instance_number=1,
                manufacturer=device.manufacturer,
                is_complete=True,
                is_verified=False,  # an AI result: UNVERIFIED until a clinician reviews it
                institution_name=device.institution_name,
                series_description="FAME Node AI result (unverified, for clinician review)",
                manufacturer_model_name=device.model_name,
                software_versions=device.software_version,
                device_serial_number=device.serial_number,
                coding_schemes=[
                    CodingSchemeIdentificationItem(
                        designator=PRIVATE_SCHEME,
                        name="FAME Node result codes",
                        responsible_organization="FAME Node",
                    )
                ],
            )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise DicomOutError(f"highdicom refuses the SR ({type(exc).__name__}: {exc})") from exc


def _frame_group(
    source: Dataset,
    result: FrameResult,
    seg: hd.seg.Segmentation,
    algorithm: hd.sr.AlgorithmIdentification,
    *,
    calibrated: bool,
    multi: bool,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    frame_number = result.frame_index + 1
    segment = hd.sr.ReferencedSegmentationFrame(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        frame_number=1,  # each SEG holds one frame (see appliance.dicom_out.seg)
        segment_number=1,
        source_image=hd.sr.SourceImageForSegmentation(
            referenced_sop_class_uid=source.SOPClassUID,
            referenced_sop_instance_uid=source.SOPInstanceUID,
            referenced_frame_numbers=[frame_number] if multi else None,
        ),
    )

    def measure(
        name: hd.sr.CodedConcept | Code, value: float | None, unit: hd.sr.CodedConcept
    ) -> hd.sr.Measurement:
        checked = finite_or_none(value)
        if checked is None:
            raise DicomOutError(f"frame {result.frame_index}: {name} is {value}, not a number")
        return hd.sr.Measurement(name=name, value=checked, unit=unit, algorithm_id=algorithm)

    mm2 = hd.sr.CodedConcept.from_code(codes.UCUM.SquareMillimeter)
    mm = hd.sr.CodedConcept.from_code(codes.UCUM.Millimeter)
    if calibrated:
        size = [
            measure(codes.SCT.Area, result.lesion_area_mm2, mm2),
            measure(codes.SCT.LongAxis, result.max_diameter_mm, mm),
        ]
    else:
        size = [
            measure(codes.SCT.Area, result.lesion_area_px, _SQUARE_PIXELS),
            measure(codes.SCT.LongAxis, result.max_diameter_px, _PIXELS),
        ]
    probabilities = []
    for label, p in result.probabilities.items():
        if not (math.isfinite(p) and 0.0 <= p <= 1.0):
            raise DicomOutError(f"frame {result.frame_index}: P({label}) = {p}, not in [0, 1]")
        probabilities.append(measure(probability_name(label), p, _NO_UNITS))
    evaluations = [
        hd.sr.QualitativeEvaluation(name=_CLASSIFICATION, value=diagnosis_code(result.diagnosis)),
        *(hd.sr.QualitativeEvaluation(name=_REVIEW_FLAG, value=flag_code(f)) for f in result.flags),
    ]
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hd.UID(), identifier=f"Lesion, frame {frame_number}"
        ),
        referenced_segment=segment,
        finding_type=codes.cid7159.Mass,
        finding_category=codes.cid7150.MorphologicallyAbnormalStructure,
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Breast)],
        algorithm_id=algorithm,
        measurements=[*size, *probabilities],
        qualitative_evaluations=evaluations,
    )
