"""Filtering, searching and sorting the worklist through its real widgets."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gui.conftest import QT_PROBLEM

if QT_PROBLEM is not None:
    pytest.skip(QT_PROBLEM, allow_module_level=True)

from PyQt6.QtCore import Qt

from appliance.app.worklist import Column
from appliance.store.reviews import ReviewStore
from gui.worklist import COLUMNS
from tests.appliance.app.nodedata import add_done_job, add_rejected_job, node_config
from tests.gui.qtutil import table_rows

pytestmark = pytest.mark.gui


@pytest.fixture
def window(tmp_path: Path, make_window):
    node = node_config(tmp_path / "node")
    add_done_job(node, "a.png", diagnosis="malignant", confidence=0.93, patient_name="Doe^Jane")
    b = add_done_job(
        node,
        "b.png",
        diagnosis="benign",
        confidence=0.55,
        flags=["low_confidence"],
        patient_name="Roe^Richard",
        patient_id="PID-0002",
        seed=1,
    )
    add_done_job(node, "c.png", diagnosis="normal", patient_name=None, patient_id=None, seed=2)
    add_rejected_job(node, "d.png", "the content is not a DICOM, PNG, JPEG or BMP image")
    ReviewStore(node.database_path).confirm(b, 0, "alice")
    return make_window(node)


def files(window) -> list[str]:
    return [r[Column.FILE] for r in table_rows(window)]


def test_filters_search_and_sort(window, qtbot) -> None:
    panel = window.worklist
    assert files(window) == ["d.png", "c.png", "b.png", "a.png"]  # newest first
    assert panel.count.text().startswith("4 of 4 images")

    qtbot.keyClicks(panel.search, "richard")
    assert files(window) == ["b.png"]
    panel.search.clear()

    panel.flagged.click()
    assert files(window) == ["b.png"]
    panel.flagged.click()

    panel.diagnosis.setCurrentIndex(panel.diagnosis.findText("Malignant"))
    assert files(window) == ["a.png"]
    panel.diagnosis.setCurrentIndex(0)

    panel.state.setCurrentIndex(panel.state.findText("Confirmed"))
    assert files(window) == ["b.png"]
    panel.state.setCurrentIndex(panel.state.findText("Not analysed (rejected files)"))
    assert files(window) == ["d.png"]
    assert table_rows(window)[0][Column.FLAGS].startswith("the content is not")
    panel.state.setCurrentIndex(panel.state.findText("To review"))
    assert files(window) == ["c.png", "a.png"]
    panel.state.setCurrentIndex(0)

    panel.received.setCurrentIndex(panel.received.findText("Today"))
    assert len(files(window)) == 4

    header = panel.table.horizontalHeader()
    qtbot.mouseClick(
        header.viewport(),
        Qt.MouseButton.LeftButton,
        pos=header.viewport().rect().topLeft()
        + type(header.viewport().rect().topLeft())(
            header.sectionViewportPosition(COLUMNS.index(Column.CONFIDENCE)) + 10, 10
        ),
    )
    column, _descending = window.worklist_model.sort
    assert column is Column.CONFIDENCE
    confidences = [r[Column.CONFIDENCE] for r in table_rows(window)]
    assert confidences[-1] == ""  # the rejected file has none: last either way
    assert sorted(confidences[:3]) in (confidences[:3], confidences[:3][::-1])


def test_flags_and_review_state_are_shown_in_words(window) -> None:
    rows = {r[Column.FILE]: r for r in table_rows(window)}
    assert rows["b.png"][Column.FLAGS] == "⚑ Low confidence"
    assert rows["b.png"][Column.REVIEW] == "✓  Confirmed"
    assert rows["a.png"][Column.PATIENT] == "Doe, Jane"
    assert rows["c.png"][Column.PATIENT] == "—"
    assert rows["d.png"][Column.DIAGNOSIS] == "Rejected"
