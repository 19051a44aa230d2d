"""Frames in, findings out: preprocessing, batched inference and postprocessing.

This is the one code path from pixels to a diagnosis; the pipeline (the service) and
`fame-node evaluate` both call `Analyzer.analyse`, so an evaluation measures exactly
what the node does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from appliance.bundle import Bundle
from appliance.config import ThresholdsConfig
from appliance.io.types import Frame
from appliance.postprocess import Diagnosis, LesionFindings, above, analyse_lesions, diagnose
from appliance.preprocess import preprocess, unletterbox
from appliance.runtime.base import InferenceBackend


@dataclass(frozen=True)
class FrameAnalysis:
    frame_index: int
    findings: LesionFindings
    diagnosis: Diagnosis
    lesion_prob: np.ndarray  # at the frame's own size, float32
    ood_score: float | None = None  # where the model computes one (trainer.ood)
    # A fold ensemble's disagreement on the lesion map, in [0, 1] (None: a single model).
    seg_uncertainty: float | None = None


class Analyzer:
    """Runs a bundle's model on frames the way the bundle's manifest says."""

    def __init__(
        self,
        bundle: Bundle,
        backend: InferenceBackend,
        thresholds: ThresholdsConfig,
        batch_size: int = 8,
    ) -> None:
        self.bundle = bundle
        self.backend = backend
        self.params = bundle.manifest.preprocess_params()
        post = bundle.manifest.postprocessing
        self.threshold = float(
            thresholds.mask_threshold
            if thresholds.mask_threshold is not None
            else post.get("mask_threshold", 0.5)
        )
        # The minimum lesion area is defined on the network's input grid; it is rescaled
        # to each frame's own pixels below.
        self.min_area_input_px = float(
            thresholds.min_lesion_area_px
            if thresholds.min_lesion_area_px is not None
            else post.get("min_lesion_area_px", 20)
        )
        self.low_confidence = thresholds.low_confidence
        # None: the model has no out-of-distribution score, or its bundle sets no threshold.
        ood = post.get("ood_threshold")
        self.ood_threshold = None if ood is None else float(ood)
        # None: a single-model bundle (no seg_uncertainty output) or no threshold set.
        unc = post.get("uncertainty_threshold")
        self.uncertainty_threshold = None if unc is None else float(unc)
        self.batch_size = batch_size
        self.classes = list(bundle.manifest.classes)

    def analyse(
        self,
        frames: Sequence[Frame],
        spacing_mm: tuple[float, float] | None,
        frame_indices: Sequence[int] | None = None,
    ) -> list[FrameAnalysis]:
        indices = list(frame_indices) if frame_indices is not None else list(range(len(frames)))
        if len(indices) != len(frames):
            raise ValueError(f"{len(indices)} frame indices for {len(frames)} frames")
        prepared = [preprocess(f, self.params) for f in frames]
        out: list[FrameAnalysis] = []
        for start in range(0, len(prepared), self.batch_size):
            chunk = prepared[start : start + self.batch_size]
            batch = np.stack([a for a, _ in chunk])[:, None].astype(np.float32)
            outputs = self.backend.infer(batch)
            scores, uncertainties = outputs.ood_score, outputs.seg_uncertainty
            for k, (_, geo) in enumerate(chunk):
                ood = None if scores is None else float(scores[k])
                unc = None if uncertainties is None else float(uncertainties[k])
                prob = unletterbox(outputs.lesion_prob[k], geo)
                min_area = self.min_area_input_px / (geo.scale**2)
                findings = analyse_lesions(
                    prob, threshold=self.threshold, min_area_px=min_area, spacing_mm=spacing_mm
                )
                dx = diagnose(
                    outputs.class_prob[k],
                    self.classes,
                    low_confidence=self.low_confidence,
                    lesion_found=findings.n_lesions > 0,
                    out_of_distribution=above(ood, self.ood_threshold),  # NaN counts as out
                    high_uncertainty=above(unc, self.uncertainty_threshold),
                )
                out.append(FrameAnalysis(indices[start + k], findings, dx, prob, ood, unc))
        return out
