"""The worklist page: every received image in a sortable, filterable table.

A view over `appliance.app.worklist.WorklistModel`: the table shows `visible`, header
clicks and the filter bar set the model's sort and filter, and the model's `changed`
event (a reload after the service wrote something, a new filter) resets the table while
keeping the selected image selected.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from PyQt6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QPersistentModelIndex,
    QRectF,
    QSize,
    Qt,
    pyqtSignal,
)
from PyQt6.QtGui import QColor, QFont, QKeySequence, QPainter, QShortcut
from PyQt6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from appliance.app.display import (
    FLAG_HELP,
    FLAG_RGB,
    JOB_STATUS_LABELS,
    NEUTRAL_RGB,
    REVIEW_LABELS,
    ReviewState,
    diagnosis_label,
    flag_label,
    local_time,
    shown_confidence,
    shown_diagnosis,
    shown_diagnosis_rgb,
    text_on,
    withheld,
)
from appliance.app.worklist import COLUMN_TITLES, Column, WorklistEntry, WorklistModel
from gui.theme import TEXT_DIM, qcolor

COLUMNS = list(Column)
ModelIndex = QModelIndex | QPersistentModelIndex

REVIEW_GLYPHS: dict[ReviewState, str] = {
    ReviewState.UNREVIEWED: "○",
    ReviewState.PARTIAL: "◐",
    ReviewState.CONFIRMED: "✓",
    ReviewState.CORRECTED: "✎",
    ReviewState.MASK_REJECTED: "✕",
    ReviewState.NOT_ANALYSED: "–",
    ReviewState.PROCESSING: "…",
}

ENTRY_ROLE = Qt.ItemDataRole.UserRole + 1


def review_text(entry: WorklistEntry) -> str:
    state = entry.review_state
    text = f"{REVIEW_GLYPHS[state]}  {REVIEW_LABELS[state]}"
    corrected = entry.reviewed_diagnosis
    if corrected is not None:
        text += f" → {diagnosis_label(corrected)}"
    return text


def cell_text(entry: WorklistEntry, column: Column) -> str:
    """What a cell shows (also what tests read)."""
    match column:
        case Column.PATIENT:
            return entry.patient_display or "—"
        case Column.PATIENT_ID:
            return entry.patient_id or "—"
        case Column.STUDY_DATE:
            return entry.study_date.isoformat() if entry.study_date else "—"
        case Column.RECEIVED:
            return local_time(entry.received)
        case Column.FILE:
            frames = f"  ({len(entry.frames)} fr)" if len(entry.frames) > 1 else ""
            return entry.file_name + frames
        case Column.DIAGNOSIS:
            if entry.status != "done":
                return JOB_STATUS_LABELS.get(entry.status, entry.status)
            return shown_diagnosis(entry.diagnosis, entry.flags)
        case Column.CONFIDENCE:
            return shown_confidence(entry.confidence, entry.flags)
        case Column.FLAGS:
            if entry.status in ("rejected", "failed", "duplicate"):
                return entry.reason or ""
            return "  ".join(f"⚑ {flag_label(f)}" for f in entry.flags)
        case Column.REVIEW:
            return review_text(entry)


class WorklistTableModel(QAbstractTableModel):
    """The Qt face of a `WorklistModel`."""

    def __init__(self, model: WorklistModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._model = model
        self._rows: list[WorklistEntry] = model.visible
        model.changed.connect(self._on_changed)

    def _on_changed(self, model: WorklistModel) -> None:
        self.beginResetModel()
        self._rows = model.visible
        self.endResetModel()

    def entry_at(self, row: int) -> WorklistEntry | None:
        return self._rows[row] if 0 <= row < len(self._rows) else None

    def row_of(self, job_id: int) -> int | None:
        for i, e in enumerate(self._rows):
            if e.job_id == job_id:
                return i
        return None

    def rowCount(self, parent: ModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: ModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMN_TITLES[COLUMNS[section]]
        return None

    def data(self, index: ModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        entry = self.entry_at(index.row())
        if entry is None:
            return None
        column = COLUMNS[index.column()]
        if role == Qt.ItemDataRole.DisplayRole:
            return cell_text(entry, column)
        if role == ENTRY_ROLE:
            return entry
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(entry, column)
        if role == Qt.ItemDataRole.ForegroundRole:
            if column == Column.FLAGS and entry.status == "done" and entry.flags:
                return qcolor(FLAG_RGB)
            if cell_text(entry, column) == "—":
                return QColor(TEXT_DIM)
            if column in (Column.FLAGS, Column.RECEIVED, Column.STUDY_DATE) or entry.status in (
                "rejected",
                "failed",
                "duplicate",
            ):
                return QColor(TEXT_DIM)
        if role == Qt.ItemDataRole.FontRole and column == Column.PATIENT and entry.patient_name:
            font = QFont()
            font.setWeight(QFont.Weight.DemiBold)
            return font
        if role == Qt.ItemDataRole.TextAlignmentRole and column == Column.CONFIDENCE:
            return Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
        return None

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        self._model.set_sort(COLUMNS[column], order == Qt.SortOrder.DescendingOrder)

    @staticmethod
    def _tooltip(entry: WorklistEntry, column: Column) -> str | None:
        if column == Column.FLAGS:
            if entry.reason:
                return entry.reason
            return "\n".join(f"{flag_label(f)}: {FLAG_HELP.get(f, f)}" for f in entry.flags)
        if column == Column.FILE:
            return str(entry.path)
        if column == Column.DIAGNOSIS and entry.status == "done":
            probabilities = entry.summary[2]
            return "\n".join(
                f"{diagnosis_label(c)}: {p * 100:.0f} %"
                for c, p in sorted(probabilities.items(), key=lambda kv: -kv[1])
            )
        return None


class BadgeDelegate(QStyledItemDelegate):
    """Diagnosis as a rounded badge: Okabe-Ito colour plus the word, never colour alone."""

    def paint(
        self, painter: QPainter | None, option: QStyleOptionViewItem, index: QModelIndex
    ) -> None:
        entry = index.data(ENTRY_ROLE)
        if painter is None or not isinstance(entry, WorklistEntry):
            super().paint(painter, option, index)
            return
        self._background(painter, option)
        text = str(index.data(Qt.ItemDataRole.DisplayRole))
        done = entry.status == "done"
        rgb = shown_diagnosis_rgb(entry.diagnosis, entry.flags) if done else NEUTRAL_RGB
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        font = QFont(option.font)
        font.setWeight(QFont.Weight.DemiBold)
        font.setPointSizeF(font.pointSizeF() * 0.92)
        painter.setFont(font)
        width = painter.fontMetrics().horizontalAdvance(text) + 18
        rect = QRectF(option.rect).adjusted(6, 5, 0, -5)
        rect.setWidth(min(width, rect.width()))
        if done:
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(qcolor(rgb))
        else:
            painter.setPen(qcolor(rgb))
            painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawRoundedRect(rect, rect.height() / 2, rect.height() / 2)
        painter.setPen(qcolor(text_on(rgb)) if done else QColor(TEXT_DIM))
        painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, text)
        painter.restore()

    @staticmethod
    def _background(painter: QPainter, option: QStyleOptionViewItem) -> None:
        style = option.widget.style() if option.widget is not None else None
        if style is not None:
            opt = QStyleOptionViewItem(option)
            opt.text = ""
            style.drawControl(QStyle.ControlElement.CE_ItemViewItem, opt, painter, option.widget)


class ConfidenceDelegate(QStyledItemDelegate):
    """The confidence as a number and a thin bar under it."""

    def paint(
        self, painter: QPainter | None, option: QStyleOptionViewItem, index: QModelIndex
    ) -> None:
        super().paint(painter, option, index)
        entry = index.data(ENTRY_ROLE)
        if painter is None or not isinstance(entry, WorklistEntry) or entry.confidence is None:
            return
        if withheld(entry.flags):  # no confidence to read, as a number or as a bar
            return
        painter.save()
        r = QRectF(option.rect).adjusted(10, option.rect.height() - 7, -10, -4)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor("#323a43"))
        painter.drawRoundedRect(r, 1.5, 1.5)
        r.setWidth(r.width() * max(0.0, min(entry.confidence, 1.0)))
        flagged = "low_confidence" in entry.flags
        painter.setBrush(qcolor(FLAG_RGB) if flagged else QColor("#8fa3b5"))
        painter.drawRoundedRect(r, 1.5, 1.5)
        painter.restore()


RECEIVED_CHOICES: list[tuple[str, int | None]] = [
    ("Any time", None),
    ("Today", 0),
    ("Last 7 days", 6),
    ("Last 30 days", 29),
]
STATE_CHOICES: list[tuple[str, frozenset[ReviewState]]] = [
    ("All review states", frozenset()),
    ("To review", frozenset({ReviewState.UNREVIEWED, ReviewState.PARTIAL})),
    ("Confirmed", frozenset({ReviewState.CONFIRMED})),
    ("Corrected", frozenset({ReviewState.CORRECTED})),
    ("Mask rejected", frozenset({ReviewState.MASK_REJECTED})),
    ("Not analysed (rejected files)", frozenset({ReviewState.NOT_ANALYSED})),
    ("Processing", frozenset({ReviewState.PROCESSING})),
]
DIAGNOSIS_CHOICES: list[tuple[str, frozenset[str]]] = [
    ("All diagnoses", frozenset()),
    ("Malignant", frozenset({"malignant"})),
    ("Benign", frozenset({"benign"})),
    ("Normal", frozenset({"normal"})),
]


def _headers(table: QTableView) -> tuple[QHeaderView, QHeaderView]:
    """(vertical, horizontal) headers; a QTableView always has both."""
    rows, columns = table.verticalHeader(), table.horizontalHeader()
    if rows is None or columns is None:
        raise RuntimeError("a QTableView without headers")
    return rows, columns


class WorklistPanel(QWidget):
    """Filter bar, table and counts. Signals: `selected(job_id)`, `opened(job_id)`."""

    selected = pyqtSignal(int)
    opened = pyqtSignal(int)

    def __init__(self, model: WorklistModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.table_model = WorklistTableModel(model, self)
        self._selected_job: int | None = None
        self._keep: int | None = None

        self.search = QLineEdit()
        self.search.setPlaceholderText("Search patient, ID, file, reason…")
        self.search.setClearButtonEnabled(True)
        self.search.setToolTip("Search (Ctrl+F): every word must appear")
        self.search.setMinimumWidth(280)
        self.state = self._combo([label for label, _ in STATE_CHOICES], "Review state")
        self.diagnosis = self._combo([label for label, _ in DIAGNOSIS_CHOICES], "Diagnosis")
        self.received = self._combo([label for label, _ in RECEIVED_CHOICES], "Received")
        self.flagged = QCheckBox("Flagged only")
        self.flagged.setToolTip("Only images the node flagged for a careful look")
        self.count = QLabel()
        self.count.setProperty("role", "dim")

        bar = QHBoxLayout()
        bar.setSpacing(8)
        for w in (self.search, self.state, self.diagnosis, self.received, self.flagged):
            bar.addWidget(w)
        bar.addStretch(1)
        bar.addWidget(self.count)

        self.table = QTableView()
        self.table.setModel(self.table_model)
        self.table.setAlternatingRowColors(True)
        self.table.setShowGrid(False)
        self.table.setWordWrap(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        rows, header = _headers(self.table)
        rows.setVisible(False)
        rows.setDefaultSectionSize(34)
        self.table.setItemDelegateForColumn(COLUMNS.index(Column.DIAGNOSIS), BadgeDelegate(self))
        self.table.setItemDelegateForColumn(
            COLUMNS.index(Column.CONFIDENCE), ConfidenceDelegate(self)
        )
        header.setHighlightSections(False)
        header.setDefaultAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        widths = {
            Column.PATIENT: 220,
            Column.PATIENT_ID: 140,
            Column.STUDY_DATE: 105,
            Column.RECEIVED: 150,
            Column.FILE: 265,
            Column.DIAGNOSIS: 115,
            Column.CONFIDENCE: 108,
            Column.FLAGS: 230,
            Column.REVIEW: 200,
        }
        for column, width in widths.items():
            self.table.setColumnWidth(COLUMNS.index(column), width)
        header.setSectionResizeMode(COLUMNS.index(Column.FLAGS), QHeaderView.ResizeMode.Stretch)
        sort_column, descending = model.sort
        header.setSortIndicator(
            COLUMNS.index(sort_column),
            Qt.SortOrder.DescendingOrder if descending else Qt.SortOrder.AscendingOrder,
        )
        self.table.setSortingEnabled(True)  # after the indicator: it sorts by it at once
        self.table.setToolTip("Double-click or Enter: open in the viewer")

        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 10, 12, 8)
        layout.setSpacing(8)
        layout.addLayout(bar)
        layout.addWidget(self.table, 1)

        self.search.textChanged.connect(lambda text: model.set_filter(text=text))
        self.state.currentIndexChanged.connect(
            lambda i: model.set_filter(states=STATE_CHOICES[i][1])
        )
        self.diagnosis.currentIndexChanged.connect(
            lambda i: model.set_filter(diagnoses=DIAGNOSIS_CHOICES[i][1])
        )
        self.received.currentIndexChanged.connect(self._on_received)
        self.flagged.toggled.connect(lambda on: model.set_filter(flagged_only=on))
        self.table.doubleClicked.connect(self._on_activated)
        self.table.activated.connect(self._on_activated)
        selection = self.table.selectionModel()
        if selection is not None:
            selection.currentRowChanged.connect(self._on_current)
        self.table_model.modelAboutToBeReset.connect(self._remember_selection)
        self.table_model.modelReset.connect(self._restore_selection)
        model.changed.connect(lambda _m: self._update_count())
        QShortcut(QKeySequence("Ctrl+F"), self, self.search.setFocus)
        self._update_count()

    @staticmethod
    def _combo(items: list[str], tip: str) -> QComboBox:
        box = QComboBox()
        box.addItems(items)
        box.setToolTip(tip)
        box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        return box

    def select_job(self, job_id: int) -> bool:
        row = self.table_model.row_of(job_id)
        if row is None:
            return False
        self.table.selectRow(row)
        self.table.scrollTo(self.table_model.index(row, 0))
        return True

    def _on_received(self, i: int) -> None:
        days = RECEIVED_CHOICES[i][1]
        start = None if days is None else date.today() - timedelta(days=days)
        self.model.set_filter(received_from=start, received_to=None)

    def _on_current(self, current: QModelIndex, _previous: QModelIndex) -> None:
        entry = self.table_model.entry_at(current.row())
        if entry is not None and entry.job_id != self._selected_job:
            self._selected_job = entry.job_id
            self.selected.emit(entry.job_id)

    def _on_activated(self, index: QModelIndex) -> None:
        entry = self.table_model.entry_at(index.row())
        if entry is not None:
            self.opened.emit(entry.job_id)

    def _remember_selection(self) -> None:
        index = self.table.currentIndex()
        entry = self.table_model.entry_at(index.row()) if index.isValid() else None
        self._keep = entry.job_id if entry is not None else self._selected_job

    def _restore_selection(self) -> None:
        keep = self._keep
        if keep is not None:
            row = self.table_model.row_of(keep)
            if row is not None:
                selection = self.table.selectionModel()
                if selection is not None:
                    selection.blockSignals(True)
                    self.table.selectRow(row)
                    selection.blockSignals(False)

    def _update_count(self) -> None:
        shown, total = len(self.model.visible), len(self.model.entries)
        todo = sum(
            1
            for e in self.model.entries
            if e.review_state in (ReviewState.UNREVIEWED, ReviewState.PARTIAL)
        )
        self.count.setText(f"{shown} of {total} images  ·  {todo} to review")

    def sizeHint(self) -> QSize:
        return QSize(1400, 800)
