"""The shipped bundle's out-of-distribution flag on what is not breast ultrasound from a
scanner it knows: the project's ultrasound phantoms, pydicom-data's obstetric, abdominal
and cardiac ultrasound, and (where ../shared exists) the BUSI test images it must pass.

These guard the shipped model itself: bundle 0.2.0, whose score read the classifier's
features alone, flagged none of these phantoms and 29 % of the pydicom-data frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance.analysis import Analyzer
from appliance.bundle import load_bundle
from appliance.config import RuntimeConfig, ThresholdsConfig
from appliance.evaluate import read_cases
from appliance.io.reader import read_file
from appliance.io.sample_data import ultrasound_sample_files, ultrasound_sample_frames
from appliance.ood_phantoms import check_phantoms, describe
from appliance.runtime import create_backend
from tests.conftest import BUSI_MANIFEST, needs_busi

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    bundle = load_bundle(REPO / "models" / "default")
    return Analyzer(
        bundle, create_backend(bundle, RuntimeConfig(backend="onnxruntime-cpu")), ThresholdsConfig()
    )


def _flagged(analyzer: Analyzer, frames: list[np.ndarray]) -> list[bool]:
    return ["out_of_distribution" in r.diagnosis.flags for r in analyzer.analyse(frames, None)]


def test_ultrasound_phantoms_are_flagged(analyzer: Analyzer) -> None:
    check = check_phantoms(analyzer)
    assert check is not None, "the shipped bundle has no out-of-distribution threshold"
    assert len(check.specs) == 24
    missed = [describe(s) for s in check.missed]
    assert not missed, f"{len(missed)} of 24 phantoms not flagged: {missed}"


def test_non_breast_ultrasound_is_flagged(analyzer: Analyzer) -> None:
    if not ultrasound_sample_files():
        pytest.skip("pydicom-data is not installed (the demo extra): no ultrasound samples")
    flagged: list[bool] = []
    for frames in ultrasound_sample_frames(max_frames=4):
        flagged += _flagged(analyzer, frames)
    assert len(flagged) >= 20
    assert np.mean(flagged) >= 0.9, f"{flagged.count(False)} of {len(flagged)} frames passed"


@needs_busi
def test_breast_test_images_mostly_pass(analyzer: Analyzer) -> None:
    cases = read_cases(BUSI_MANIFEST, "test")
    frames = [read_file(c.image).frames[0] for c in cases]
    flagged = _flagged(analyzer, frames)
    # The threshold flags 5 % of val; RESULTS.md reports 6.4 % of this split.
    assert np.mean(flagged) <= 0.15, f"{flagged.count(True)} of {len(frames)} BUSI images flagged"
