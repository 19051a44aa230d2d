"""The GUI over a node that a real `fame-node process` run filled: worklist, live updates,
the overlay on a real image, corrections into the training set."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.gui.conftest import QT_PROBLEM

if QT_PROBLEM is not None:
    pytest.skip(QT_PROBLEM, allow_module_level=True)

import numpy as np
from PIL import Image
from PyQt6.QtCore import QPointF, Qt

from appliance.app.worklist import Column
from appliance.store.reviews import ReviewStore
from tests.e2e.nodeutil import REPO_ROOT, fame_node, node_env
from tests.gui.conftest import ProcessedNode, busi_test_images
from tests.gui.qtutil import drag, grab, table_rows

pytestmark = pytest.mark.gui


def test_worklist_shows_every_file_of_a_real_process_run(
    processed_node: ProcessedNode, make_window
) -> None:
    window = make_window(processed_node.config)
    rows = {r[Column.FILE].split("  (")[0]: r for r in table_rows(window)}
    assert len(rows) == len(processed_node.outcomes)
    withheld = 0
    for outcome in processed_node.outcomes:
        row = rows[Path(outcome["path"]).name]
        if outcome["status"] == "done":
            first = outcome["frames"][0]
            if len(outcome["frames"]) == 1 and "out_of_distribution" in first["flags"]:
                # Unlike the training images: no class or confidence to read (these
                # samples are non-breast ultrasound and phantoms, so some always are).
                assert (row[Column.DIAGNOSIS], row[Column.CONFIDENCE]) == ("Not assessed", "—")
                withheld += 1
            elif len(outcome["frames"]) == 1:
                assert row[Column.DIAGNOSIS] == first["diagnosis"].capitalize()
                assert row[Column.CONFIDENCE] == f"{first['confidence'] * 100:.0f} %"
            assert row[Column.REVIEW].endswith("To review")
        else:
            assert row[Column.DIAGNOSIS] in ("Rejected", "Duplicate", "Failed")
            assert row[Column.FLAGS] == outcome["reason"]  # nothing goes missing silently
    dicom = rows["JPGLosslessP14SV1_1s_1f_8b.dcm"]
    assert (dicom[Column.PATIENT], dicom[Column.STUDY_DATE]) == ("Citizen, Jan", "2019-01-24")
    assert rows["scan-notes.png"][Column.DIAGNOSIS] == "Rejected"
    assert withheld >= 1


def test_results_written_by_another_process_appear_by_themselves(
    processed_node: ProcessedNode, make_window, qtbot, tmp_path: Path
) -> None:
    window = make_window(processed_node.config)
    before = len(table_rows(window))
    new = tmp_path / "arrived-later.png"
    extra = busi_test_images(2)
    if extra:
        new.write_bytes(extra[-1].read_bytes())
    else:
        from PIL import Image

        from tests.appliance.app.nodedata import speckle_image

        Image.fromarray(speckle_image(seed=7)).save(new)
    env = node_env(processed_node.config.paths.root)
    proc = subprocess.Popen(
        fame_node("process", str(new)), env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL
    )
    try:
        qtbot.waitUntil(lambda: len(table_rows(window)) == before + 1, timeout=60_000)
    finally:
        proc.wait(60)
    qtbot.waitUntil(
        lambda: any(
            r[Column.FILE] == new.name and r[Column.REVIEW].endswith("To review")
            for r in table_rows(window)
        ),
        timeout=10_000,
    )
    assert window.status_timer.isActive() and window.worklist_timer.isActive()


def _open(window, qtbot, job_id: int) -> None:
    assert window.open_case(job_id)
    qtbot.waitUntil(lambda: window.viewer_model.case is not None)
    window.activateWindow()
    window.viewer_page.viewer.view.setFocus()


def test_an_image_unlike_the_training_images_shows_no_diagnosis(
    processed_node: ProcessedNode, make_window, qtbot
) -> None:
    # US1_J2KR.dcm: pydicom-data's non-breast ultrasound (issue 10: "normal", 96 %, before).
    (outcome,) = [o for o in processed_node.outcomes if o["path"].endswith("US1_J2KR.dcm")]
    frame = outcome["frames"][0]
    assert "out_of_distribution" in frame["flags"]  # the shipped model flags it
    window = make_window(processed_node.config)
    _open(window, qtbot, outcome["job_id"])
    panel = window.viewer_page.review
    assert panel.badge.text() == "NOT ASSESSED"
    assert "AI: Not assessed" in window.viewer_page.details.text()
    assert frame["diagnosis"].upper() not in panel.badge.text()
    assert "unlike the training images" in panel.confidence.text()
    assert "%" not in panel.confidence.text()
    assert all(row.value.text() == "—" for row in panel.probabilities.values())
    assert "Not like the training images" in panel.flags.text()
    # The result itself keeps what the model said (result.json, the store, the SR).
    assert frame["diagnosis"] in ("normal", "benign", "malignant") and frame["confidence"] > 0
    # No diagnosis to confirm; a clinician can still give the image one.
    assert not panel.confirm.isEnabled()
    assert all(b.isEnabled() for b in panel.diagnosis_buttons.values())


def test_overlay_toggle_changes_the_rendered_pixels(
    processed_node: ProcessedNode, make_window, qtbot
) -> None:
    window = make_window(processed_node.config)
    _open(window, qtbot, processed_node.with_lesion["job_id"])
    view = window.viewer_page.viewer.view
    viewport = view.viewport()
    with_overlay = grab(viewport).astype(int)
    qtbot.keyClick(view, Qt.Key.Key_O)  # the keyboard shortcut
    assert not window.viewer_model.display.overlay
    without = grab(viewport).astype(int)
    changed = (with_overlay != without).any(axis=2)
    assert changed.sum() > 100
    # Where it changed, the overlay pulled the grey towards the orange lesion colour.
    warm = (with_overlay[..., 0] - with_overlay[..., 2]) - (without[..., 0] - without[..., 2])
    assert (warm[changed] > 0).mean() > 0.95
    assert window.viewer_page.viewer.overlay.isChecked() is False
    qtbot.keyClick(view, Qt.Key.Key_O)
    assert (grab(viewport) == with_overlay).all()
    window.viewer_page.viewer.opacity.setValue(90)  # a denser fill: other pixels again
    assert (grab(viewport) != with_overlay).any()


def test_a_correction_is_stored_and_joins_the_training_set(
    processed_node: ProcessedNode, make_window, qtbot
) -> None:
    window = make_window(processed_node.config, reviewer="dr-jones")
    outcome = processed_node.with_lesion
    job = outcome["job_id"]
    model_diagnosis = outcome["frames"][0]["diagnosis"]
    other = "normal" if model_diagnosis != "normal" else "benign"
    _open(window, qtbot, job)
    panel = window.viewer_page.review
    qtbot.mouseClick(panel.diagnosis_buttons[other], Qt.MouseButton.LeftButton)
    reviews = ReviewStore(processed_node.config.database_path)
    (example,) = [e for e in reviews.training_set() if e.job_id == job]
    assert (example.label, example.decision, example.reviewer) == (other, "corrected", "dr-jones")
    assert example.image_path == Path(outcome["path"]).absolute()
    row = next(r for r in table_rows(window) if r[Column.FILE] == Path(outcome["path"]).name)
    assert row[Column.REVIEW].endswith(f"Corrected → {other.capitalize()}")
    assert "dr-jones" in panel.state.text()

    # Redraw the mask: brush a stroke near the top-left corner, erase across the lesion's
    # centre (X), save (S): the training set takes the redrawn mask.
    view = window.viewer_page.viewer.view
    qtbot.keyClick(view, Qt.Key.Key_E)
    editor = window.viewer_model.editor
    assert editor is not None
    before = editor.mask.copy()
    rows, cols = before.shape
    corner = [view.mapFromScene(QPointF(cols * f, rows * 0.06)) for f in (0.04, 0.08, 0.12)]
    drag(view.viewport(), [(p.x(), p.y()) for p in corner])
    qtbot.keyClick(view, Qt.Key.Key_X)
    ys, xs = np.nonzero(before)
    across = [view.mapFromScene(QPointF(x, ys.mean())) for x in np.linspace(xs.min(), xs.max(), 8)]
    drag(view.viewport(), [(p.x(), p.y()) for p in across])
    drawn = editor.mask
    assert (drawn & ~before.astype(bool)).any() and (before.astype(bool) & ~drawn).any()
    qtbot.keyClick(view, Qt.Key.Key_S)
    assert window.viewer_model.editor is None
    (example,) = [e for e in reviews.training_set() if e.job_id == job]
    assert example.mask_source == "reviewed" and example.label == other
    saved = np.asarray(Image.open(example.mask_path)) > 0
    assert np.array_equal(saved, drawn.astype(bool))

    # Undo (Ctrl+Z) takes back the last decision: the diagnosis correction stays.
    qtbot.keyClick(view, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    (example,) = [e for e in reviews.training_set() if e.job_id == job]
    assert example.mask_source == "model" and example.label == other
    reviews.close()
