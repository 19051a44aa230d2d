"""Which of the ultrasound phantoms a model lets past its out-of-distribution flag.

A phantom (`appliance.phantom`) looks like breast ultrasound to a person and is not a
patient: a model must flag it ``out_of_distribution`` rather than diagnose it. A model's OOD
head is fitted on its own network's features, so a new network can change what the head
flags: seed 2027's network of the shipped recipe let 3 of the 24 phantoms of
`appliance.phantom.ood_check_specs` through to a diagnosis where seed 2028's flags all 24
(docs/RESULTS.md, 0.2.7). So the same 24 are checked wherever a model is about to reach
patients' images: the shipped bundle (tests/e2e/test_ood_shipped.py), every candidate
(`trainer.site_report`), and a federated global model before a node deploys it
(`appliance.federation.deploy` refuses one that flags fewer of them than the model it runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from appliance.analysis import Analyzer
from appliance.phantom import PhantomSpec, make_phantom, ood_check_specs


@dataclass(frozen=True)
class PhantomCheck:
    """Each phantom of `specs`, whether the model flagged it out of distribution, and its
    OOD score over the bundle's threshold (above 1: flagged)."""

    specs: tuple[PhantomSpec, ...]
    flagged: tuple[bool, ...]
    margins: tuple[float, ...] = ()

    @property
    def missed(self) -> list[PhantomSpec]:
        """The phantoms the model would have diagnosed as breast images."""
        return [s for s, f in zip(self.specs, self.flagged, strict=True) if not f]

    def lost_against(self, before: PhantomCheck) -> list[PhantomSpec]:
        """The phantoms `before` flagged and this check lets through (same specs)."""
        if before.specs != self.specs:
            raise ValueError("the two checks were made on different phantoms")
        return [
            s
            for s, now, then in zip(self.specs, self.flagged, before.flagged, strict=True)
            if then and not now
        ]

    def to_dict(self) -> dict[str, Any]:
        """``n``, ``flagged`` (a count), ``missed`` (each by seed, echogenicity and
        posterior) and ``least_margin`` (the lowest score over the threshold: how near the
        flag came to letting one through): the ``phantoms`` key of a site report."""
        return {
            "n": len(self.specs),
            "flagged": sum(self.flagged),
            "missed": [describe(s) for s in self.missed],
            "least_margin": _least(self.margins),
        }


def _least(margins: tuple[float, ...]) -> float | None:
    known = [m for m in margins if np.isfinite(m)]
    return round(min(known), 3) if known else None


def describe(spec: PhantomSpec) -> dict[str, Any]:
    """What tells the check's phantoms apart: their seed, echogenicity and posterior."""
    return {"seed": spec.seed, "echogenicity": spec.echogenicity, "posterior": spec.posterior}


def check_phantoms(
    analyzer: Analyzer, specs: list[PhantomSpec] | None = None
) -> PhantomCheck | None:
    """Run `analyzer` on the phantoms of `specs` (default `ood_check_specs`, the 24 a
    shipped model must flag); None where its bundle has no OOD threshold, so flags nothing."""
    if analyzer.ood_threshold is None:
        return None
    chosen = tuple(ood_check_specs() if specs is None else specs)
    analysed = analyzer.analyse([make_phantom(spec).image for spec in chosen], None)
    flags = tuple("out_of_distribution" in r.diagnosis.flags for r in analysed)
    threshold = analyzer.ood_threshold
    margins = tuple(
        float("nan") if r.ood_score is None else float(r.ood_score) / threshold for r in analysed
    )
    return PhantomCheck(chosen, flags, margins)
