"""The models page: the active model, what it runs on, its history, and rollback.

A view over `appliance.app.models_panel.ModelsPanelModel`. Rollback needs a reason (it
goes into the model history) and asks for confirmation in a message box that names both
models before anything happens.
"""

from __future__ import annotations

import json

from PyQt6.QtCore import Qt, pyqtSignal
from PyQt6.QtGui import QColor
from PyQt6.QtWidgets import (
    QAbstractItemView,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from appliance.app.display import OKABE_ITO, local_time, provider_label
from appliance.app.models_panel import ModelsPanelModel, figures_text
from appliance.errors import FameNodeError
from gui.theme import TEXT_DIM, qcolor

ACTION_LABELS = {
    "installed": "Installed",
    "activated": "Activated",
    "refused": "Refused",
    "rolled_back": "Rolled back to",
    "removed": "Removed",
}
ACTION_COLOURS = {
    "activated": OKABE_ITO["sky_blue"],
    "rolled_back": OKABE_ITO["orange"],
    "refused": OKABE_ITO["vermillion"],
}
HISTORY_COLUMNS = ("When", "Model", "Event", "By", "Why", "Measured")


class ModelsPanel(QWidget):
    """Active model card, rollback, and the history table. Signal: `message(str)`."""

    message = pyqtSignal(str)

    def __init__(self, model: ModelsPanelModel, actor: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.actor = actor

        card = QFrame()
        card.setProperty("role", "panel")
        grid = QGridLayout(card)
        grid.setContentsMargins(16, 12, 16, 14)
        grid.setHorizontalSpacing(24)
        caption_active = QLabel("ACTIVE MODEL")
        caption_active.setProperty("role", "heading")
        caption_backend = QLabel("RUNS ON")
        caption_backend.setProperty("role", "heading")
        self.active = QLabel()
        self.active.setProperty("role", "title")
        self.active.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.active_figures = QLabel()
        self.active_figures.setProperty("role", "dim")
        self.backend = QLabel()
        self.backend.setProperty("role", "title")
        self.backend_source = QLabel()
        self.backend_source.setProperty("role", "dim")
        grid.addWidget(caption_active, 0, 0)
        grid.addWidget(self.active, 1, 0)
        grid.addWidget(self.active_figures, 2, 0)
        grid.addWidget(caption_backend, 0, 1)
        grid.addWidget(self.backend, 1, 1)
        grid.addWidget(self.backend_source, 2, 1)
        grid.setColumnStretch(0, 1)
        grid.setColumnStretch(1, 1)

        rollback = QFrame()
        rollback.setProperty("role", "panel")
        row = QHBoxLayout(rollback)
        row.setContentsMargins(16, 10, 16, 10)
        self.rollback_text = QLabel()
        self.reason = QLineEdit()
        self.reason.setPlaceholderText("Reason for the rollback (kept in the history)")
        self.reason.setMinimumWidth(340)
        self.rollback_button = QPushButton("Roll back…")
        self.rollback_button.setProperty("role", "danger")
        self.rollback_button.setToolTip(
            "Re-activate the previously active model; asks for confirmation first"
        )
        row.addWidget(self.rollback_text, 1)
        row.addWidget(self.reason)
        row.addWidget(self.rollback_button)

        self.table = QTableWidget(0, len(HISTORY_COLUMNS))
        self.table.setHorizontalHeaderLabels(list(HISTORY_COLUMNS))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setAlternatingRowColors(True)
        self.table.setShowGrid(False)
        self.table.setWordWrap(True)  # reasons (why refused, why rolled back) in full
        self.table.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.table.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        vheader = self.table.verticalHeader()
        if vheader is not None:
            vheader.setVisible(False)
            vheader.setDefaultSectionSize(32)
        header = self.table.horizontalHeader()
        if header is not None:
            header.setDefaultAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
            header.setSectionResizeMode(4, QHeaderView.ResizeMode.Stretch)
        for i, width in enumerate((140, 190, 110, 100, 380, 560)):
            self.table.setColumnWidth(i, width)

        heading = QLabel("MODEL HISTORY")
        heading.setProperty("role", "heading")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 12, 12, 8)
        layout.setSpacing(10)
        layout.addWidget(card)
        layout.addWidget(rollback)
        layout.addWidget(heading)
        layout.addWidget(self.table, 1)

        self.reason.textChanged.connect(lambda _t: self._update_rollback())
        self.rollback_button.clicked.connect(self.request_rollback)
        model.changed.connect(lambda _m: self.refresh())
        self.refresh()

    def refresh(self) -> None:
        m = self.model
        self.active.setText(m.active_label or "—")
        active_event = next(
            (
                e
                for e in m.history
                if e.model == m.active_label and e.action in ("activated", "rolled_back")
            ),
            None,
        )
        self.active_figures.setText(
            figures_text(active_event.figures) if active_event and active_event.figures else ""
        )
        b = m.backend
        self.backend.setText(provider_label(b.provider))
        self.backend_source.setText(
            f"{b.backend or 'ONNX Runtime'} · reported by the running service"
            if b.source == "service"
            else "Service not running · as used for the newest result"
            if b.source == "newest result"
            else "Service not running · nothing processed yet"
        )
        self._update_rollback()
        history = m.history
        self.table.setRowCount(len(history))
        for i, e in enumerate(history):
            cells = (
                local_time(e.at),
                e.model,
                ACTION_LABELS.get(e.action, e.action),
                e.actor,
                e.reason or "",
                figures_text(e.figures),
            )
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if j == 4:
                    item.setToolTip(text)
                elif j == 5 and e.figures:
                    item.setToolTip(json.dumps(e.figures, indent=1)[:2000])
                if j == 2 and e.action in ACTION_COLOURS:
                    item.setForeground(qcolor(ACTION_COLOURS[e.action]))
                if j in (0, 3, 5):
                    item.setForeground(QColor(TEXT_DIM))
                self.table.setItem(i, j, item)
        self.table.resizeRowsToContents()
        for i in range(self.table.rowCount()):  # breathing room around wrapped reasons
            self.table.setRowHeight(i, max(32, self.table.rowHeight(i) + 10))

    def _update_rollback(self) -> None:
        target = self.model.rollback_target
        if target is None:
            self.rollback_text.setText(
                "Rollback: no earlier model in this node's history to go back to."
            )
        else:
            self.rollback_text.setText(f"Roll back to the previously active model <b>{target}</b>")
        self.reason.setEnabled(target is not None)
        self.rollback_button.setEnabled(target is not None and bool(self.reason.text().strip()))

    def request_rollback(self) -> None:
        """Ask for confirmation, then roll back through the registry."""
        target = self.model.rollback_target
        reason = self.reason.text().strip()
        if target is None or not reason:
            return
        if not self.confirm(
            "Roll back the model?",
            f"Roll back from {self.model.active_label} to {target}?",
            "The service switches to the earlier model for new images; results already made "
            f"keep the model that made them.\n\nReason: {reason}",
        ):
            self.message.emit("Rollback cancelled")
            return
        try:
            event = self.model.rollback(self.actor, reason)
        except (FameNodeError, ValueError) as exc:
            QMessageBox.warning(self, "Rollback not done", str(exc))
            self.message.emit(f"Rollback not done: {exc}")
            return
        self.reason.clear()
        self.message.emit(f"Rolled back to {event.model} (by {self.actor})")

    def confirm(self, title: str, text: str, details: str) -> bool:
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Icon.Warning)
        box.setWindowTitle(title)
        box.setText(text)
        box.setInformativeText(details)
        go = box.addButton("Roll back", QMessageBox.ButtonRole.DestructiveRole)
        cancel = box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(cancel)
        box.exec()
        return box.clickedButton() is go
