"""result.json is strict JSON: a non-finite number is written as null, never NaN/Infinity."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from appliance.results import strict_json
from appliance.results.writers import write_result_json


def _strict_loads(text: str) -> object:
    def refuse(word: str) -> object:
        raise ValueError(f"not JSON: {word}")

    return json.loads(text, parse_constant=refuse)


def test_result_json_with_non_finite_measurements_parses_strictly(tmp_path: Path) -> None:
    frame = {
        "frame_index": 0,
        "probabilities": {"normal": float("nan"), "benign": 0.25, "malignant": np.float32(0.75)},
        "lesion_area_mm2": float("inf"),  # from a broken pixel spacing
        "max_diameter_mm": np.float64("nan"),
        "max_diameter_px": -float("inf"),
        "n_lesions": np.int64(1),
        "flags": ("low_confidence",),
    }
    summary = {"job_id": 3, "image": {"pixel_spacing_mm": (float("nan"), 0.1)}}
    path = write_result_json(tmp_path, summary, [frame])
    data = _strict_loads(path.read_text(encoding="utf-8"))
    assert data == {
        "job_id": 3,
        "image": {"pixel_spacing_mm": [None, 0.1]},
        "frames": [
            {
                "frame_index": 0,
                "probabilities": {"normal": None, "benign": 0.25, "malignant": 0.75},
                "lesion_area_mm2": None,
                "max_diameter_mm": None,
                "max_diameter_px": None,
                "n_lesions": 1,
                "flags": ["low_confidence"],
            }
        ],
    }


def test_finite_numbers_and_text_are_kept_exactly() -> None:
    value = {"a": 0.1, "b": [1, True, None, "caf\u00e9"], "c": 1e308, "d": -0.0}
    assert _strict_loads(strict_json.dumps(value)) == value
    assert strict_json.dumps({"x": np.array([1.5, np.nan])}) == '{"x": [1.5, null]}'
    assert math.copysign(1, strict_json.finite(-0.0)) == -1


def test_what_json_cannot_hold_is_refused_with_its_type() -> None:
    with pytest.raises(TypeError, match="cannot write a set as JSON"):
        strict_json.dumps({"a": {1, 2}})
    with pytest.raises(TypeError, match="keys must be str, got int"):
        strict_json.dumps({1: "a"})
