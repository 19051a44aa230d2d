"""The findings and review sidebar of the viewer.

Top: what the model found on the shown frame (diagnosis badge, confidence, flags, class
probabilities, lesion area and largest diameter, the model version and backend). Below:
the clinician's decision (confirm, correct the diagnosis, reject the mask, redraw it with a
brush and an eraser, undo) and the frame's review history. Decisions go through
`appliance.app.review.ReviewService`; nothing here writes to the store itself.
"""

from __future__ import annotations

from collections.abc import Callable

from PyQt6.QtCore import Qt, pyqtSignal
from PyQt6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from appliance.app.display import (
    FLAG_HELP,
    FLAG_RGB,
    confidence_text,
    describe_decision,
    diagnosis_label,
    diagnosis_rgb,
    flag_label,
    lesion_size,
    local_time,
    provider_label,
    shown_diagnosis,
    shown_diagnosis_rgb,
    text_on,
    withheld,
)
from appliance.app.mask_editor import Tool
from appliance.app.review import Action, ReviewService
from appliance.app.viewer import Change, ViewerModel
from appliance.errors import FameNodeError
from gui.theme import BORDER, TEXT_DIM, css

CLASSES = ("normal", "benign", "malignant")


def heading(text: str) -> QLabel:
    label = QLabel(text.upper())
    label.setProperty("role", "heading")
    return label


class Badge(QLabel):
    """A large diagnosis badge: colour and word."""

    def set_diagnosis(
        self, diagnosis: str | None, suffix: str = "", flags: tuple[str, ...] = ()
    ) -> None:
        rgb = shown_diagnosis_rgb(diagnosis, flags)
        self.setText(shown_diagnosis(diagnosis, flags).upper() + suffix)
        self.setStyleSheet(
            f"background: {css(rgb)}; color: {css(text_on(rgb))}; border-radius: 13px;"
            "padding: 4px 14px; font-weight: 700; font-size: 11pt; letter-spacing: 1px;"
        )


class ProbabilityRow(QWidget):
    def __init__(self, cls: str) -> None:
        super().__init__()
        self.name = QLabel(diagnosis_label(cls))
        self.name.setFixedWidth(76)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setTextVisible(False)
        self.bar.setFixedHeight(8)
        rgb = diagnosis_rgb(cls)
        self.bar.setStyleSheet(
            f"QProgressBar {{ background: {BORDER}; border-radius: 4px; }}"
            f"QProgressBar::chunk {{ background: {css(rgb)}; border-radius: 4px; }}"
        )
        self.value = QLabel()
        self.value.setFixedWidth(46)
        self.value.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 1, 0, 1)
        row.addWidget(self.name)
        row.addWidget(self.bar, 1)
        row.addWidget(self.value)

    def set(self, p: float | None) -> None:
        self.bar.setValue(0 if p is None else round(p * 1000))
        self.value.setText("—" if p is None else f"{p * 100:.1f} %")


class ReviewPanel(QFrame):
    """Findings and decisions for the frame on screen. Signal: `message(str)` for the
    status bar (what was recorded, or why it could not be)."""

    message = pyqtSignal(str)

    def __init__(
        self, viewer: ViewerModel, review: ReviewService, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.review = review
        self.setProperty("role", "panel")
        self.setFixedWidth(340)

        # -- findings ---------------------------------------------------------------------
        self.badge = Badge()
        self.confidence = QLabel()
        self.confidence.setProperty("role", "dim")
        self.flags = QLabel()
        self.flags.setWordWrap(True)
        self.flags.setStyleSheet(f"color: {css(FLAG_RGB)};")
        self.probabilities = {c: ProbabilityRow(c) for c in CLASSES}
        self.area = QLabel()
        self.diameter = QLabel()
        self.lesions = QLabel()
        self.mask_source = QLabel()
        self.mask_source.setProperty("role", "dim")
        self.model_version = QLabel()
        self.model_backend = QLabel()
        self.analysed = QLabel()

        # -- decisions --------------------------------------------------------------------
        self.state = QLabel()
        self.state.setWordWrap(True)
        self.all_frames = QCheckBox("Apply to all analysed frames")
        self.all_frames.setToolTip("Confirm, correct or reject every analysed frame of the clip")
        self.confirm = QPushButton("✓  Confirm AI result")
        self.confirm.setProperty("role", "primary")
        self.confirm.setToolTip("The diagnosis and the mask are right (C)")
        self.diagnosis_buttons: dict[str, QPushButton] = {}
        diag_row = QHBoxLayout()
        diag_row.setSpacing(6)
        for i, cls in enumerate(CLASSES, start=1):
            b = QPushButton(diagnosis_label(cls))
            b.setToolTip(f"Correct the diagnosis to {diagnosis_label(cls)} ({i})")
            b.clicked.connect(lambda _c=False, cls=cls: self.correct_diagnosis(cls))
            self.diagnosis_buttons[cls] = b
            diag_row.addWidget(b)
        self.reject = QPushButton("Reject mask")
        self.reject.setProperty("role", "danger")
        self.reject.setToolTip("The lesion mask is wrong and will not be redrawn (R)")
        self.edit = QPushButton("✎  Correct mask…")
        self.edit.setToolTip("Redraw the mask with a brush and an eraser (E)")
        mask_row = QHBoxLayout()
        mask_row.addWidget(self.reject)
        mask_row.addWidget(self.edit)

        self.brush = QPushButton("Brush")
        self.brush.setCheckable(True)
        self.brush.setToolTip("Paint lesion (B)")
        self.eraser = QPushButton("Eraser")
        self.eraser.setCheckable(True)
        self.eraser.setToolTip("Erase lesion (X)")
        group = QButtonGroup(self)
        group.addButton(self.brush)
        group.addButton(self.eraser)
        self.brush.setChecked(True)
        self.brush_size = QSlider(Qt.Orientation.Horizontal)
        self.brush_size.setRange(1, 60)
        self.brush_size.setValue(8)
        self.brush_size.setToolTip("Brush size ([ smaller, ] larger)")
        self.save_mask = QPushButton("Save mask")
        self.save_mask.setProperty("role", "primary")
        self.save_mask.setToolTip("Store the redrawn mask as the correction (S)")
        self.cancel_edit = QPushButton("Cancel")
        self.cancel_edit.setToolTip("Discard the redrawing (Esc)")
        self.edit_box = QFrame()
        edit_layout = QGridLayout(self.edit_box)
        edit_layout.setContentsMargins(0, 4, 0, 0)
        edit_layout.addWidget(self.brush, 0, 0)
        edit_layout.addWidget(self.eraser, 0, 1)
        size_caption = QLabel("Size")
        size_caption.setProperty("role", "dim")
        edit_layout.addWidget(size_caption, 1, 0)
        edit_layout.addWidget(self.brush_size, 1, 1)
        edit_layout.addWidget(self.save_mask, 2, 0)
        edit_layout.addWidget(self.cancel_edit, 2, 1)
        self.edit_box.setVisible(False)

        self.undo = QPushButton("↶  Undo")
        self.undo.setToolTip("Undo the last decision, or the last brush stroke (Ctrl+Z)")
        self.history = QListWidget()
        self.history.setMaximumHeight(130)
        self.history.setWordWrap(True)
        self.history.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.history.setFocusPolicy(Qt.FocusPolicy.NoFocus)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(14, 10, 14, 12)
        layout.setSpacing(6)
        layout.addWidget(heading("AI result"))
        top = QHBoxLayout()
        top.addWidget(self.badge)
        top.addWidget(self.confidence, 1)
        layout.addLayout(top)
        layout.addWidget(self.flags)
        layout.addWidget(heading("Class probabilities"))
        for row in self.probabilities.values():
            layout.addWidget(row)
        layout.addWidget(heading("Lesion"))
        sizes = QGridLayout()
        sizes.setHorizontalSpacing(12)
        for i, (caption, value) in enumerate(
            (("Area", self.area), ("Largest diameter", self.diameter), ("Lesions", self.lesions))
        ):
            label = QLabel(caption)
            label.setProperty("role", "dim")
            label.setFixedWidth(118)
            sizes.addWidget(label, i, 0)
            sizes.addWidget(value, i, 1)
        layout.addLayout(sizes)
        layout.addWidget(self.mask_source)
        layout.addWidget(heading("Model"))
        model_rows = QGridLayout()
        model_rows.setHorizontalSpacing(12)
        for i, (caption, value) in enumerate(
            (
                ("Version", self.model_version),
                ("Runs on", self.model_backend),
                ("Analysed", self.analysed),
            )
        ):
            label = QLabel(caption)
            label.setProperty("role", "dim")
            label.setFixedWidth(118)
            model_rows.addWidget(label, i, 0)
            model_rows.addWidget(value, i, 1)
        model_rows.setColumnStretch(1, 1)
        layout.addLayout(model_rows)
        layout.addWidget(heading("Review"))
        layout.addWidget(self.state)
        layout.addWidget(self.all_frames)
        layout.addWidget(self.confirm)
        correct_caption = QLabel("Correct diagnosis")
        correct_caption.setProperty("role", "dim")
        layout.addWidget(correct_caption)
        layout.addLayout(diag_row)
        layout.addLayout(mask_row)
        layout.addWidget(self.edit_box)
        layout.addWidget(self.undo)
        layout.addWidget(heading("History of this frame"))
        layout.addWidget(self.history)
        layout.addStretch(1)

        self.confirm.clicked.connect(self.confirm_result)
        self.reject.clicked.connect(self.reject_mask)
        self.edit.clicked.connect(self.start_editing)
        self.save_mask.clicked.connect(self.save_edited_mask)
        self.cancel_edit.clicked.connect(self.cancel_editing)
        self.undo.clicked.connect(self.undo_last)
        self.brush.toggled.connect(lambda on: self._set_tool(Tool.BRUSH if on else Tool.ERASER))
        self.brush_size.valueChanged.connect(self._set_radius)
        viewer.changed.connect(self._on_change)
        review.reviewed.connect(lambda _job: self._refresh())
        self._refresh()

    # -- actions (also the keyboard shortcuts' targets) -------------------------------------
    def _frames(self) -> list[int]:
        case, frame = self.viewer.case, self.viewer.frame
        if case is None or frame is None:
            return []
        if self.all_frames.isChecked() and len(case.frames) > 1:
            return [f.frame_index for f in case.frames]
        return [frame.frame_index]

    def _act(self, what: str, run: Callable[[int, list[int]], Action]) -> None:
        case = self.viewer.case
        frames = self._frames()
        if case is None or not frames or self.viewer.editor is not None:
            return
        try:
            action = run(case.job.id, frames)
        except (FameNodeError, ValueError) as exc:
            self.message.emit(f"{what} not recorded: {exc}")
            return
        self.message.emit(f"{action.label} (by {self.review.reviewer})")

    def confirm_result(self) -> None:
        self._act("Confirmation", self.review.confirm)

    def correct_diagnosis(self, diagnosis: str) -> None:
        self._act(
            "Correction",
            lambda job, frames: self.review.correct_diagnosis(job, frames, diagnosis),
        )

    def reject_mask(self) -> None:
        self._act("Rejection", self.review.reject_mask)

    def start_editing(self) -> None:
        if self.viewer.editor is not None or self.viewer.frame is None:
            return
        try:
            editor = self.viewer.start_editing()
        except FameNodeError as exc:
            self.message.emit(str(exc))
            return
        editor.radius = self.brush_size.value()
        editor.tool = Tool.BRUSH if self.brush.isChecked() else Tool.ERASER
        self.message.emit("Correcting the mask: paint with the left button; S saves, Esc cancels")

    def save_edited_mask(self) -> None:
        editor, case, frame = self.viewer.editor, self.viewer.case, self.viewer.frame
        if editor is None or case is None or frame is None:
            return
        try:
            action = self.review.save_mask(case.job.id, frame.frame_index, editor.mask)
        except (FameNodeError, ValueError) as exc:
            self.message.emit(f"Mask not saved: {exc}")
            return
        self.message.emit(f"{action.label} (by {self.review.reviewer})")

    def cancel_editing(self) -> None:
        self.viewer.stop_editing()

    def undo_last(self) -> None:
        editor = self.viewer.editor
        if editor is not None:
            if not editor.undo():
                self.message.emit("Nothing to undo in this drawing")
            return
        try:
            action = self.review.undo()
        except FameNodeError as exc:
            self.message.emit(str(exc))
            return
        self.message.emit("Nothing to undo" if action is None else f"Undone: {action.label}")

    def set_tool(self, tool: Tool) -> None:
        (self.brush if tool is Tool.BRUSH else self.eraser).setChecked(True)

    def grow_brush(self, step: int) -> None:
        self.brush_size.setValue(self.brush_size.value() + step)

    def _set_tool(self, tool: Tool) -> None:
        if self.viewer.editor is not None:
            self.viewer.editor.tool = tool

    def _set_radius(self, value: int) -> None:
        if self.viewer.editor is not None:
            self.viewer.editor.radius = value

    # -- model -> widgets -------------------------------------------------------------------
    def _on_change(self, change: Change) -> None:
        if change in (Change.CASE, Change.FRAME, Change.REVIEW, Change.MASK):
            self._refresh()

    def _refresh(self) -> None:
        case, frame = self.viewer.case, self.viewer.frame
        editing = self.viewer.editor is not None
        has_case = case is not None and frame is not None
        for w in (self.confirm, self.reject, self.edit, *self.diagnosis_buttons.values()):
            w.setEnabled(has_case and not editing)
        # No diagnosis shown, none to confirm (the store refuses it too): choose one instead.
        if frame is not None and withheld(frame.result.flags):
            self.confirm.setEnabled(False)
        self.edit_box.setVisible(editing)
        self.all_frames.setVisible(case is not None and len(case.frames) > 1)
        last = self.review.last_action
        self.undo.setEnabled(editing or last is not None)
        self.undo.setToolTip(
            "Undo the last brush stroke (Ctrl+Z)"
            if editing
            else f"Undo: {last.label} (Ctrl+Z)"
            if last is not None
            else "Nothing to undo yet"
        )
        if case is None or frame is None:
            self.badge.set_diagnosis(None)
            self.confidence.setText("No image open")
            self.flags.setText("")
            for row in self.probabilities.values():
                row.set(None)
            for label in (
                self.area,
                self.diameter,
                self.lesions,
                self.mask_source,
                self.model_version,
                self.model_backend,
                self.analysed,
            ):
                label.setText("")
            self.state.setText("")
            self.history.clear()
            return
        r = frame.result
        self.badge.set_diagnosis(r.diagnosis, flags=tuple(r.flags))
        self.confidence.setText(confidence_text(r.confidence, r.seg_uncertainty, r.flags))
        self.flags.setText("\n".join(f"⚑ {flag_label(f)}" for f in r.flags))
        self.flags.setToolTip("\n".join(f"{flag_label(f)}: {FLAG_HELP.get(f, f)}" for f in r.flags))
        self.flags.setVisible(bool(r.flags))
        for cls, row in self.probabilities.items():  # none to read where it is withheld
            row.set(None if withheld(r.flags) else r.probabilities.get(cls))
        m = self.viewer.measures()
        if m is None:
            area, diameter = "—", "—"
        else:
            area, diameter = lesion_size(
                m.area_mm2, m.area_px, m.max_diameter_mm, m.max_diameter_px
            )
        self.area.setText(area)
        self.diameter.setText(diameter)
        self.lesions.setText("—" if m is None or m.n_lesions is None else str(m.n_lesions))
        self.mask_source.setText(
            "Measured on the mask being drawn"
            if editing
            else "Measured on the clinician's corrected mask"
            if frame.reviewed_mask is not None
            else "Measured on the AI mask"
        )
        self.model_version.setText(r.model_version or "—")
        self.model_backend.setText(provider_label(r.backend))
        self.analysed.setText(local_time(r.created_at))
        self._show_review_state()

    def _show_review_state(self) -> None:
        frame = self.viewer.frame
        if frame is None:
            return
        review = frame.review
        if review is None:
            self.state.setText(f"Not reviewed yet · you review as <b>{self.review.reviewer}</b>")
        else:
            what = describe_decision(
                review.decision,
                review.diagnosis,
                review.mask_path is not None,
                frame.result.diagnosis,
            )
            self.state.setText(f"<b>{what}</b> by {review.reviewer}, {local_time(review.at)}")
        self.history.clear()
        case = self.viewer.case
        if case is None:
            return
        for past in self.review.history(case.job.id, frame.frame_index):
            what = describe_decision(
                past.decision, past.diagnosis, past.mask_path is not None, frame.result.diagnosis
            )
            text = f"{local_time(past.at)[11:]}  {past.reviewer}: {what}"
            item = QListWidgetItem(text + ("  (undone)" if past.undone_at else ""))
            item.setToolTip(f"{local_time(past.at)}  {past.reviewer}: {what}")
            if past.undone_at is not None:
                font = item.font()
                font.setStrikeOut(True)
                item.setFont(font)
                item.setForeground(Qt.GlobalColor.gray)
            self.history.addItem(item)
        if self.history.count() == 0:
            item = QListWidgetItem("No decisions yet")
            item.setForeground(Qt.GlobalColor.gray)
            self.history.addItem(item)
        self.history.setStyleSheet(f"color: {TEXT_DIM};")
