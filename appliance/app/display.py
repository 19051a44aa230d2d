"""How findings are shown: colours, labels and text formats shared by every view.

Colours are from the Okabe-Ito palette, which stays distinguishable for the common
colour-vision deficiencies; every colour is paired with a text label, so nothing is told
by colour alone. Pure data and functions, no Qt.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, date, datetime
from enum import StrEnum

RGB = tuple[int, int, int]

# Okabe & Ito (2008), "Color Universal Design".
OKABE_ITO: dict[str, RGB] = {
    "orange": (230, 159, 0),
    "sky_blue": (86, 180, 233),
    "bluish_green": (0, 158, 115),
    "yellow": (240, 228, 66),
    "blue": (0, 114, 178),
    "vermillion": (213, 94, 0),
    "reddish_purple": (204, 121, 167),
}

# The model's lesion (the same orange as the overlay PNGs of `appliance.results.writers`)
# and a mask redrawn by a clinician: orange and sky blue stay apart for every common CVD.
MODEL_MASK_RGB: RGB = OKABE_ITO["orange"]
REVIEWED_MASK_RGB: RGB = OKABE_ITO["sky_blue"]

DIAGNOSIS_RGB: dict[str, RGB] = {
    "normal": OKABE_ITO["sky_blue"],
    "benign": OKABE_ITO["yellow"],
    "malignant": OKABE_ITO["vermillion"],
}
NEUTRAL_RGB: RGB = (120, 126, 134)
FLAG_RGB: RGB = OKABE_ITO["orange"]

FLAG_LABELS: dict[str, str] = {
    "out_of_distribution": "Not like the training images",
    "high_uncertainty": "Uncertain outline",
    "low_confidence": "Low confidence",
    "segmentation_disagrees": "Mask vs diagnosis",
    "ensemble_disagrees": "Ensemble disagrees",
    "frames_disagree": "Frames disagree",
    "uid_conflict": "UID conflict",
}
FLAG_HELP: dict[str, str] = {
    "out_of_distribution": (
        "the image is unlike the breast ultrasound the model was trained on (another body "
        "part, a phantom, a screenshot?): its diagnosis and mask mean nothing"
    ),
    "high_uncertainty": (
        "the fold models of the segmentation ensemble disagree on the lesion outline more "
        "than the model's threshold (set on its validation images) allows: check the mask"
    ),
    "low_confidence": "the most probable class is below the node's confidence threshold",
    "segmentation_disagrees": (
        "a lesion was segmented on an image classified normal, or none on one classified "
        "benign / malignant"
    ),
    "ensemble_disagrees": "the models of the ensemble do not agree",
    "frames_disagree": "the analysed frames of this clip have different diagnoses",
    "uid_conflict": (
        "another image (other patient, study or pixels) carries the same SOP Instance UID; "
        "this result is this image's own. Check the modality or anonymiser that sent it"
    ),
}


class ReviewState(StrEnum):
    """Where an image stands in review (a job-level summary of its frames' reviews)."""

    UNREVIEWED = "unreviewed"
    PARTIAL = "partial"
    CONFIRMED = "confirmed"
    CORRECTED = "corrected"
    MASK_REJECTED = "mask_rejected"
    NOT_ANALYSED = "not_analysed"  # rejected, failed or duplicate: nothing to review
    PROCESSING = "processing"  # queued or running


REVIEW_LABELS: dict[ReviewState, str] = {
    ReviewState.UNREVIEWED: "To review",
    ReviewState.PARTIAL: "Partly reviewed",
    ReviewState.CONFIRMED: "Confirmed",
    ReviewState.CORRECTED: "Corrected",
    ReviewState.MASK_REJECTED: "Mask rejected",
    ReviewState.NOT_ANALYSED: "Not analysed",
    ReviewState.PROCESSING: "Processing",
}

DECISION_LABELS: dict[str, str] = {
    "confirmed": "Confirmed",
    "corrected": "Corrected",
    "mask_rejected": "Mask rejected",
}

JOB_STATUS_LABELS: dict[str, str] = {
    "queued": "Waiting",
    "running": "Processing",
    "done": "Done",
    "rejected": "Rejected",
    "failed": "Failed",
    "duplicate": "Duplicate",
}


PROVIDER_LABELS: dict[str, str] = {
    "CPUExecutionProvider": "CPU (ONNX Runtime)",
    "CUDAExecutionProvider": "NVIDIA GPU (ONNX Runtime CUDA)",
    "TensorrtExecutionProvider": "NVIDIA GPU (TensorRT)",
}


def provider_label(provider: str | None) -> str:
    """What an inference provider is, in words (``CPUExecutionProvider``: CPU (ONNX Runtime))."""
    if not provider:
        return "unknown"
    return PROVIDER_LABELS.get(provider, provider)


def describe_decision(
    decision: str, diagnosis: str | None, mask_redrawn: bool, model_diagnosis: str | None
) -> str:
    """A review in words: "Confirmed", "Diagnosis → Benign, mask redrawn", "Mask rejected"."""
    if decision == "confirmed":
        return "Confirmed"
    parts = []
    if diagnosis is not None and diagnosis != model_diagnosis:
        parts.append(f"diagnosis → {diagnosis_label(diagnosis)}")
    if decision == "mask_rejected":
        parts.insert(0, "mask rejected")
    elif mask_redrawn:
        parts.append("mask redrawn")
    text = ", ".join(parts) or DECISION_LABELS.get(decision, decision).lower()
    return text[0].upper() + text[1:]


def confidence_text(
    confidence: float | None, seg_uncertainty: float | None = None, flags: Iterable[str] = ()
) -> str:
    """The confidence as shown, with a fold ensemble's outline uncertainty under it:
    ``"87 % confidence\noutline uncertainty 0.12"`` (two lines: the viewer's badge row has
    no room for both on one); "" without a confidence; where the diagnosis is `withheld`,
    that it is, and why, instead of a percentage."""
    if confidence is None:
        return ""
    if withheld(flags):
        return "no diagnosis: the image is unlike the training images"
    text = f"{confidence * 100:.0f} % confidence"
    if seg_uncertainty is None:
        return text
    shown = "not computed" if math.isnan(seg_uncertainty) else f"{seg_uncertainty:.2f}"
    return f"{text}\noutline uncertainty {shown}"


def flag_label(flag: str) -> str:
    return FLAG_LABELS.get(flag, flag.replace("_", " ").capitalize())


def diagnosis_label(diagnosis: str | None) -> str:
    return "—" if diagnosis is None else diagnosis.capitalize()


def diagnosis_rgb(diagnosis: str | None) -> RGB:
    return DIAGNOSIS_RGB.get(diagnosis or "", NEUTRAL_RGB)


NOT_ASSESSED = "Not assessed"  # what an out-of-distribution image shows instead of a class
WITHHELD_FLAG = "out_of_distribution"


def withheld(flags: Iterable[str]) -> bool:
    """Whether the model's diagnosis is withheld from the clinician's eye: the image is
    unlike the training images, so its class and confidence mean nothing (`FLAG_HELP`). The
    result keeps them (result.json, the store, the SR with its flag); only the display
    shows "Not assessed" in the neutral colour instead of a confident-looking class."""
    return WITHHELD_FLAG in flags


def shown_diagnosis(diagnosis: str | None, flags: Iterable[str] = ()) -> str:
    """The diagnosis as the GUI shows it: `NOT_ASSESSED` where `withheld`."""
    return NOT_ASSESSED if diagnosis is not None and withheld(flags) else diagnosis_label(diagnosis)


def console_diagnosis(
    diagnosis: str | None, confidence: float | None, flags: Iterable[str] = ()
) -> tuple[str, str]:
    """The diagnosis and its probability as the node's console tables print them
    (``benign``, ``0.87``): `NOT_ASSESSED` and "—" where `withheld`, as in the GUI."""
    if withheld(flags):
        return NOT_ASSESSED, "—"
    return diagnosis or "-", "" if confidence is None else f"{confidence:.2f}"


def shown_diagnosis_rgb(diagnosis: str | None, flags: Iterable[str] = ()) -> RGB:
    return NEUTRAL_RGB if withheld(flags) else diagnosis_rgb(diagnosis)


def shown_confidence(confidence: float | None, flags: Iterable[str] = ()) -> str:
    """The worklist's confidence cell: "87 %", or "—" where the diagnosis is withheld."""
    if confidence is None:
        return ""
    return "—" if withheld(flags) else f"{confidence * 100:.0f} %"


def text_on(rgb: RGB) -> RGB:
    """Black or white, whichever reads better on `rgb` (WCAG relative luminance)."""

    def channel(c: int) -> float:
        v = c / 255
        return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb)
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return (0, 0, 0) if luminance > 0.22 else (255, 255, 255)


def person_name(dicom_pn: str | None) -> str:
    """A DICOM Person Name (``Family^Given^Middle^Prefix^Suffix``) as ``Family, Given Middle``.

    Only the separators change; the name is shown as the DICOM gives it.
    """
    if not dicom_pn:
        return ""
    alphabetic = dicom_pn.split("=")[0]
    parts = [p.strip() for p in alphabetic.split("^")]
    family = parts[0] if parts else ""
    given = " ".join(p for p in parts[1:3] if p)
    prefix = parts[3] if len(parts) > 3 else ""
    suffix = parts[4] if len(parts) > 4 else ""
    name = f"{family}, {given}" if family and given else family or given
    name = f"{prefix} {name}".strip() if prefix else name
    return f"{name} {suffix}".strip() if suffix else name


def study_date(dicom_da: str | None) -> date | None:
    """A DICOM DA value (``YYYYMMDD``; old ``YYYY.MM.DD`` too) as a date; None if not one."""
    if not dicom_da:
        return None
    digits = dicom_da.strip().replace(".", "")
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None


def local_time(moment: datetime) -> str:
    """``2025-05-20 14:03`` in the machine's local time zone."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware.astimezone().strftime("%Y-%m-%d %H:%M")


def lesion_size(
    area_mm2: float | None,
    area_px: float | None,
    diameter_mm: float | None,
    diameter_px: float | None,
) -> tuple[str, str]:
    """(area, largest diameter) as text, in mm where calibrated, else in pixels, labelled."""
    if area_mm2 is not None and diameter_mm is not None:
        return f"{area_mm2:.1f} mm²", f"{diameter_mm:.1f} mm"
    area = "—" if area_px is None else f"{area_px:.0f} px² (not calibrated)"
    diameter = "—" if diameter_px is None else f"{diameter_px:.0f} px (not calibrated)"
    return area, diameter
