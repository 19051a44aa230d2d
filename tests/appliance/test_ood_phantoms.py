"""The phantom check of a model's out-of-distribution flag (appliance.ood_phantoms)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.analysis import Analyzer
from appliance.bundle import load_bundle
from appliance.config import RuntimeConfig, ThresholdsConfig
from appliance.ood_phantoms import PhantomCheck, check_phantoms, describe
from appliance.phantom import PhantomSpec, ood_check_specs

REPO = Path(__file__).resolve().parents[2]
SPECS = tuple(ood_check_specs()[:3])


def test_lost_against_names_what_the_earlier_model_flagged_and_this_one_does_not() -> None:
    before = PhantomCheck(SPECS, (True, False, True))
    after = PhantomCheck(SPECS, (False, True, True))
    assert after.lost_against(before) == [SPECS[0]]  # SPECS[1]: never flagged, not lost
    assert before.lost_against(after) == [SPECS[1]]
    assert after.lost_against(after) == []
    assert after.missed == [SPECS[0]]
    assert after.to_dict() == {
        **{"n": 3, "flagged": 2, "missed": [describe(SPECS[0])], "least_margin": None}
    }
    with_margins = PhantomCheck(SPECS, (False, True, True), (0.96, 1.5, float("nan")))
    assert with_margins.to_dict()["least_margin"] == 0.96
    with pytest.raises(ValueError, match="different phantoms"):
        after.lost_against(PhantomCheck(SPECS[:2], (True, True)))


def test_check_runs_the_model_on_the_phantoms_it_is_given() -> None:
    from appliance.runtime import create_backend

    bundle = load_bundle(REPO / "models" / "default")
    backend = create_backend(bundle, RuntimeConfig(backend="onnxruntime-cpu"))
    analyzer = Analyzer(bundle, backend, ThresholdsConfig())
    specs = [PhantomSpec(seed=7, echogenicity=0.25), PhantomSpec(seed=8, lesion="none")]
    check = check_phantoms(analyzer, specs)
    assert check is not None and check.specs == tuple(specs)
    assert check.flagged == (True, True)  # the shipped model flags phantoms it never saw
    analyzer.ood_threshold = 1e12  # no score reaches it: every phantom gets a diagnosis
    blind = check_phantoms(analyzer, specs)
    assert blind is not None and blind.lost_against(check) == specs
    analyzer.ood_threshold = None  # a bundle without the score: nothing to check
    assert check_phantoms(analyzer, specs) is None
