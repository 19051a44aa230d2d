"""The review store: decisions carried forward, undo, redrawn masks, the training set."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from appliance.config import NodeConfig
from appliance.store.reviews import NothingToConfirmError, ReviewStore, ReviewTargetError
from tests.appliance.app.nodedata import add_done_job, add_rejected_job, lesion_mask, node_config


@pytest.fixture
def node(tmp_path: Path) -> NodeConfig:
    return node_config(tmp_path / "node")


def _store(node: NodeConfig) -> ReviewStore:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    minutes = itertools.count()
    return ReviewStore(node.database_path, clock=lambda: t0 + timedelta(minutes=next(minutes)))


def test_confirm_records_who_when_and_the_models_diagnosis(node: NodeConfig) -> None:
    job = add_done_job(node, "a.png", diagnosis="malignant")
    store = _store(node)
    review = store.confirm(job, 0, " alice ")
    assert (review.decision, review.diagnosis, review.reviewer) == (
        "confirmed",
        "malignant",
        "alice",
    )
    assert review.mask_path is None and review.undone_at is None
    assert review.at.tzinfo is not None
    assert store.current(job, 0) == review


def test_an_out_of_distribution_frame_cannot_be_confirmed_only_diagnosed(
    node: NodeConfig,
) -> None:
    job = add_done_job(node, "obstetric.png", diagnosis="normal", flags=["out_of_distribution"])
    store = _store(node)
    with pytest.raises(NothingToConfirmError, match="choose the diagnosis yourself"):
        store.confirm(job, 0, "alice")
    assert store.current(job, 0) is None
    assert [e.job_id for e in store.training_set()] == []  # nothing entered training
    review = store.correct_diagnosis(job, 0, "benign", "alice")
    assert (review.decision, review.diagnosis) == ("corrected", "benign")
    assert [e.label for e in store.training_set()] == ["benign"]
    other = add_done_job(node, "b.png", diagnosis="normal", flags=["low_confidence"], seed=1)
    assert store.confirm(other, 0, "alice").decision == "confirmed"  # other flags: as before


def test_corrections_carry_forward_into_one_row(node: NodeConfig) -> None:
    job = add_done_job(node, "a.png", diagnosis="benign")
    store = _store(node)
    first = store.correct_diagnosis(job, 0, "malignant", "alice")
    assert (first.decision, first.diagnosis) == ("corrected", "malignant")
    mask = lesion_mask()
    mask[:10, :10] = 1
    second = store.correct_mask(job, 0, mask, "bob")
    # The redrawn mask keeps the corrected diagnosis: the row is the frame's whole state.
    assert (second.decision, second.diagnosis) == ("corrected", "malignant")
    assert second.mask_path is not None
    assert second.mask_path.name == "frame_000_mask_reviewed.png"
    saved = np.asarray(Image.open(second.mask_path))
    assert set(np.unique(saved)) == {0, 255} and (saved > 0).sum() == mask.sum()
    # Setting the diagnosis back to the model's keeps the redrawn mask: still a correction.
    third = store.correct_diagnosis(job, 0, "benign", "bob")
    assert (third.decision, third.mask_path) == ("corrected", second.mask_path)


def test_model_diagnosis_on_an_untouched_mask_is_a_confirmation(node: NodeConfig) -> None:
    job = add_done_job(node, "a.png", diagnosis="normal")
    assert _store(node).correct_diagnosis(job, 0, "normal", "alice").decision == "confirmed"


def test_rejected_mask_stays_rejected_when_the_diagnosis_is_corrected(node: NodeConfig) -> None:
    job = add_done_job(node, "a.png", diagnosis="benign")
    store = _store(node)
    store.confirm(job, 0, "alice")
    rejected = store.reject_mask(job, 0, "alice")
    assert (rejected.decision, rejected.diagnosis) == ("mask_rejected", "benign")
    later = store.correct_diagnosis(job, 0, "malignant", "alice")
    assert (later.decision, later.diagnosis) == ("mask_rejected", "malignant")
    assert store.training_set() == []


def test_undo_makes_the_previous_review_current_and_keeps_the_trail(node: NodeConfig) -> None:
    job = add_done_job(node, "a.png")
    store = _store(node)
    confirmed = store.confirm(job, 0, "alice")
    corrected = store.correct_diagnosis(job, 0, "malignant", "alice")
    undone = store.undo_last(job, 0)
    assert undone is not None and undone.id == corrected.id and undone.undone_at is not None
    assert store.current(job, 0) == confirmed
    with pytest.raises(ValueError, match="already undone"):
        store.undo(corrected.id)
    assert [r.id for r in store.history(job)] == [corrected.id, confirmed.id]
    assert store.undo_last(job, 0) is not None
    assert store.current(job, 0) is None and store.undo_last(job, 0) is None


def test_only_the_latest_decision_can_be_undone(node: NodeConfig) -> None:
    job = add_done_job(node, "a.png")
    store = _store(node)
    first = store.confirm(job, 0, "alice")
    store.reject_mask(job, 0, "bob")
    with pytest.raises(ValueError, match="not the latest decision"):
        store.undo(first.id)


def test_a_second_redraw_never_overwrites_the_first(node: NodeConfig) -> None:
    job = add_done_job(node, "a.png")
    store = _store(node)
    one = store.correct_mask(job, 0, lesion_mask(), "alice")
    two = store.correct_mask(job, 0, np.zeros_like(lesion_mask()), "alice")
    assert one.mask_path != two.mask_path
    assert two.mask_path is not None and two.mask_path.name == "frame_000_mask_reviewed_2.png"
    store.undo(two.id)
    current = store.current(job, 0)
    assert current is not None and current.mask_path == one.mask_path
    assert np.asarray(Image.open(one.mask_path)).any()  # still the first drawing


def test_training_set_is_confirmed_and_corrected_frames_with_their_masks(node: NodeConfig) -> None:
    a = add_done_job(node, "a.png", diagnosis="benign")
    b = add_done_job(node, "b.png", diagnosis="normal", seed=1)
    c = add_done_job(node, "c.png", diagnosis="malignant", seed=2)
    add_done_job(node, "unreviewed.png", seed=3)
    store = _store(node)
    store.confirm(a, 0, "alice")
    store.correct_mask(b, 0, lesion_mask(), "bob")
    store.correct_diagnosis(b, 0, "benign", "bob")
    store.reject_mask(c, 0, "alice")
    examples = store.training_set()
    assert [(e.job_id, e.label, e.mask_source, e.decision) for e in examples] == [
        (a, "benign", "model", "confirmed"),
        (b, "benign", "reviewed", "corrected"),
    ]
    assert examples[0].mask_path.name == "frame_000_mask.png" and examples[0].mask_path.is_file()
    assert examples[1].mask_path.name == "frame_000_mask_reviewed.png"
    assert examples[0].image_path == node.folder("inbox") / "a.png"
    assert examples[0].frame_index == 0 and examples[0].sha256 and examples[1].reviewer == "bob"


def test_refuses_what_cannot_be_reviewed(node: NodeConfig) -> None:
    job = add_done_job(node, "a.png")
    rejected = add_rejected_job(node, "bad.png", "not an image")
    store = _store(node)
    with pytest.raises(ReviewTargetError, match="no result for frame 3"):
        store.confirm(job, 3, "alice")
    with pytest.raises(ReviewTargetError):
        store.confirm(rejected, 0, "alice")
    with pytest.raises(ValueError, match="expected one of the model's classes"):
        store.correct_diagnosis(job, 0, "cyst", "alice")
    with pytest.raises(ValueError, match="reviewer's name"):
        store.confirm(job, 0, "  ")
    with pytest.raises(ValueError, match=r"shape \(5, 5\), expected \(120, 160\)"):
        store.correct_mask(job, 0, np.ones((5, 5)), "alice")
    assert store.history(job) == []


def test_change_token_moves_on_decisions_and_undo(node: NodeConfig) -> None:
    job = add_done_job(node, "a.png")
    store = _store(node)
    t0 = store.change_token()
    store.confirm(job, 0, "alice")
    t1 = store.change_token()
    store.undo_last(job, 0)
    assert len({t0, t1, store.change_token()}) == 3
