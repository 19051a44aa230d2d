"""How findings are put into words and colours."""

from __future__ import annotations

from datetime import date

from appliance.app.display import (
    DIAGNOSIS_RGB,
    NEUTRAL_RGB,
    confidence_text,
    console_diagnosis,
    describe_decision,
    lesion_size,
    person_name,
    provider_label,
    shown_confidence,
    shown_diagnosis,
    shown_diagnosis_rgb,
    study_date,
    text_on,
)


def test_dicom_names_and_dates_as_shown() -> None:
    assert person_name("Doe^Jane") == "Doe, Jane"
    assert person_name("NAME^PATIENT^NAME") == "NAME, PATIENT NAME"
    assert person_name("OB^^^^") == "OB"
    assert person_name("Smith^John^^Dr^Jr=ideographic") == "Dr Smith, John Jr"
    assert person_name(None) == ""
    assert study_date("20190124") == date(2019, 1, 24)
    assert study_date("1994.11.05") == date(1994, 11, 5)
    assert study_date("11-05-25") is None and study_date("20191332") is None


def test_decisions_sizes_and_providers_in_words() -> None:
    assert describe_decision("confirmed", "benign", False, "benign") == "Confirmed"
    assert describe_decision("corrected", "malignant", True, "benign") == (
        "Diagnosis → Malignant, mask redrawn"
    )
    assert describe_decision("corrected", "benign", True, "benign") == "Mask redrawn"
    assert describe_decision("mask_rejected", None, False, "benign") == "Mask rejected"
    assert lesion_size(12.34, 1234, 4.56, 45.6) == ("12.3 mm²", "4.6 mm")
    assert lesion_size(None, 1234, None, 45.6) == (
        "1234 px² (not calibrated)",
        "46 px (not calibrated)",
    )
    assert provider_label("CPUExecutionProvider") == "CPU (ONNX Runtime)"
    assert provider_label(None) == "unknown"


def test_badge_text_stays_readable_on_every_diagnosis_colour() -> None:
    assert text_on(DIAGNOSIS_RGB["benign"]) == (0, 0, 0)  # yellow: dark text
    assert text_on((0, 0, 0)) == (255, 255, 255)
    assert len(set(DIAGNOSIS_RGB.values())) == 3


def test_a_diagnosis_is_withheld_from_view_where_the_image_is_out_of_distribution() -> None:
    ood = ("out_of_distribution", "low_confidence")
    assert shown_diagnosis("normal", ood) == "Not assessed"
    assert shown_diagnosis_rgb("malignant", ood) == NEUTRAL_RGB
    assert shown_confidence(0.96, ood) == "—"
    assert "unlike the training images" in confidence_text(0.96, None, ood)
    # Other flags leave the diagnosis in view.
    other = ("low_confidence", "segmentation_disagrees")
    assert shown_diagnosis("normal", other) == "Normal"
    assert shown_diagnosis_rgb("malignant", other) == DIAGNOSIS_RGB["malignant"]
    assert shown_confidence(0.96, other) == "96 %"
    assert confidence_text(0.96, None, other) == "96 % confidence"
    # Nothing analysed: nothing to withhold.
    assert shown_diagnosis(None, ood) == "—" and shown_confidence(None, ood) == ""


def test_console_tables_withhold_the_diagnosis_as_the_gui_does() -> None:
    assert console_diagnosis("benign", 0.66, ("out_of_distribution",)) == ("Not assessed", "—")
    assert console_diagnosis("benign", 0.66, ("low_confidence",)) == ("benign", "0.66")
    assert console_diagnosis(None, None) == ("-", "")


def test_fame_node_results_table_withholds_it_too() -> None:
    from appliance.status import format_results

    frame = {
        "diagnosis": "normal", "confidence": 0.96, "lesion_area_mm2": None,
        "lesion_area_px": 5800.0, "flags": ["out_of_distribution"],
    }  # fmt: skip
    row = {"job_id": 1, "job_status": "done", "duplicate_of": None, "path": "US1_J2KR.dcm"}
    text = format_results([{**row, "frames": [frame]}])
    line = text.splitlines()[-1]
    assert "Not assessed" in line and "normal" not in line and "0.96" not in line
    plain = format_results([{**row, "frames": [{**frame, "flags": []}]}])
    assert "normal" in plain and "0.96" in plain
