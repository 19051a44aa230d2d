"""The viewer model reading cases back, and the review service with session undo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance.app.display import MODEL_MASK_RGB, REVIEWED_MASK_RGB
from appliance.app.review import ReviewService, UndoError
from appliance.app.viewer import CaseError, CaseLoader, Change, ViewerModel
from appliance.config import NodeConfig
from appliance.store.jobs import JobQueue
from appliance.store.results import ResultStore
from appliance.store.reviews import ReviewStore
from tests.appliance.app.nodedata import (
    add_done_job,
    add_rejected_job,
    lesion_mask,
    node_config,
    speckle_image,
)


@pytest.fixture
def node(tmp_path: Path) -> NodeConfig:
    return node_config(tmp_path / "node")


def _parts(node: NodeConfig) -> tuple[ViewerModel, ReviewService, ReviewStore]:
    db = node.database_path
    reviews = ReviewStore(db)
    loader = CaseLoader(JobQueue(db), ResultStore(db), reviews)
    return ViewerModel(loader.load, loader.with_reviews), ReviewService(reviews, "alice"), reviews


def test_opens_the_original_frame_with_the_models_mask(node: NodeConfig) -> None:
    job = add_done_job(node, "a.png", spacing_mm=(0.1, 0.1))
    viewer, _, _ = _parts(node)
    changes: list[Change] = []
    viewer.changed.connect(changes.append)
    case = viewer.open(job)
    assert changes == [Change.CASE] and case.note is None and not case.overlay_only
    frame = viewer.frame
    assert frame is not None and np.array_equal(frame.image, speckle_image())
    assert np.array_equal(viewer.shown_mask, lesion_mask())
    assert viewer.mask_rgb == MODEL_MASK_RGB
    m = viewer.measures()
    assert m is not None and m.area_px == lesion_mask().sum() and m.area_mm2 == pytest.approx(24.0)
    assert viewer.toggle_overlay() is False and changes[-1] is Change.DISPLAY
    viewer.set_window(60, 40)
    assert viewer.display.window == (60.0, 40.0)
    viewer.reset_window()
    with pytest.raises(ValueError, match="opacity"):
        viewer.set_display(opacity=2.0)


def test_a_changed_or_missing_input_falls_back_to_the_stored_overlay(node: NodeConfig) -> None:
    job = add_done_job(node, "a.png")
    (node.folder("inbox") / "a.png").write_bytes(b"replaced by something else")
    viewer, _, _ = _parts(node)
    case = viewer.open(job)
    assert case.overlay_only and case.note is not None and "has changed" in case.note
    frame = viewer.frame
    assert frame is not None and frame.image.shape == (120, 160, 3)
    with pytest.raises(CaseError):
        viewer.start_editing()
    (node.folder("inbox") / "a.png").unlink()
    assert "no longer there" in (viewer.open(job).note or "")


def test_rejected_jobs_have_no_case(node: NodeConfig) -> None:
    rejected = add_rejected_job(node, "x.png", "not an image")
    viewer, _, _ = _parts(node)
    with pytest.raises(CaseError, match="rejected"):
        viewer.open(rejected)


def test_decisions_show_in_the_viewer_and_undo_takes_back_the_last(node: NodeConfig) -> None:
    job = add_done_job(node, "a.png", diagnosis="benign")
    viewer, review, store = _parts(node)
    review.reviewed.connect(lambda _job: viewer.refresh_reviews())
    viewer.open(job)
    review.confirm(job, [0])
    corrected = review.correct_diagnosis(job, [0], "malignant")
    frame = viewer.frame
    assert frame is not None and frame.review is not None
    assert frame.review.diagnosis == "malignant" and "Malignant" in corrected.label
    undone = review.undo()
    assert undone == corrected
    frame = viewer.frame
    assert frame is not None and frame.review is not None
    assert frame.review.decision == "confirmed"
    store.reject_mask(job, 0, "bob")  # someone else decided meanwhile
    with pytest.raises(UndoError, match="by bob"):
        review.undo()


def test_redrawing_the_mask_is_stored_and_shown_in_the_reviewers_colour(node: NodeConfig) -> None:
    job = add_done_job(node, "a.png", spacing_mm=(0.1, 0.1))
    viewer, review, store = _parts(node)
    review.reviewed.connect(lambda _job: (viewer.stop_editing(), viewer.refresh_reviews()))
    viewer.open(job)
    editor = viewer.start_editing()
    assert viewer.mask_rgb == REVIEWED_MASK_RGB
    editor.radius = 5
    editor.begin_stroke(5, 5)
    editor.extend_stroke(20, 5)
    editor.end_stroke()
    edited = viewer.measures()
    assert edited is not None and edited.area_px > lesion_mask().sum()
    review.save_mask(job, 0, editor.mask)
    assert viewer.editor is None
    frame = viewer.frame
    assert frame is not None and frame.reviewed_mask is not None
    assert frame.reviewed_mask.sum() == edited.area_px
    assert viewer.mask_rgb == REVIEWED_MASK_RGB
    (example,) = review.training_set()
    assert example.mask_source == "reviewed" and example.label == "benign"
    assert store.current(job, 0) is not None
