"""The main window: worklist, viewer and models pages, the node's status bar, timers.

`MainWindow` is built over a `ClinicalApp` (the application model) and only shows it: a
timer calls `ClinicalApp.poll()` so that results the service writes (another process)
appear by themselves. `run_gui` is what ``fame-node gui`` runs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from PyQt6.QtCore import Qt, QTimer
from PyQt6.QtGui import QCloseEvent, QKeySequence, QShortcut
from PyQt6.QtWidgets import (
    QApplication,
    QFrame,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from appliance.app.display import person_name, provider_label, shown_diagnosis, study_date
from appliance.app.federation_panel import FederationPanelModel
from appliance.app.mask_editor import Tool
from appliance.app.models_panel import ModelRegistryLike
from appliance.app.node_status import NodeStatus
from appliance.app.session import ClinicalApp
from appliance.app.viewer import Change, ViewerModel
from appliance.app.worklist import WorklistModel
from appliance.config import NodeConfig
from appliance.errors import FameNodeError
from gui.federation_panel import FederationPanel
from gui.models_panel import ModelsPanel
from gui.review import ReviewPanel
from gui.theme import apply_theme
from gui.viewer import ViewerPanel
from gui.worklist import WorklistPanel

WORKLIST_POLL_MS = 1000
STATUS_POLL_MS = 3000


class ViewerPage(QWidget):
    """Patient banner, previous / next case, the viewer and the review sidebar."""

    def __init__(self, app: ClinicalApp, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.app = app
        self.viewer = ViewerPanel(app.viewer)
        self.review = ReviewPanel(app.viewer, app.review)

        banner = QFrame()
        banner.setProperty("role", "banner")
        self.patient = QLabel()
        self.patient.setProperty("role", "title")
        self.details = QLabel()
        self.details.setProperty("role", "dim")
        self.prev_case = QPushButton("◀ Previous")
        self.prev_case.setToolTip("Previous image in the worklist (Page Up)")
        self.next_case = QPushButton("Next ▶")
        self.next_case.setToolTip("Next image in the worklist (Page Down)")
        row = QHBoxLayout(banner)
        row.setContentsMargins(14, 8, 14, 8)
        row.addWidget(self.patient)
        row.addSpacing(16)
        row.addWidget(self.details, 1)
        row.addWidget(self.prev_case)
        row.addWidget(self.next_case)

        body = QHBoxLayout()
        body.setContentsMargins(12, 8, 12, 8)
        body.setSpacing(10)
        body.addWidget(self.viewer, 1)
        body.addWidget(self.review)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(banner)
        layout.addLayout(body, 1)

        self.prev_case.clicked.connect(lambda: self.open_neighbour(-1))
        self.next_case.clicked.connect(lambda: self.open_neighbour(1))
        app.viewer.changed.connect(self._on_change)
        self._shortcuts()
        self._on_change(Change.CASE)

    def _shortcuts(self) -> None:
        viewer, review, model = self.viewer, self.review, self.app.viewer

        def when_viewing(fn: Callable[[], object]) -> Callable[[], None]:
            def run() -> None:
                if model.case is not None:
                    fn()

            return run

        def when_editing(fn: Callable[[], object]) -> Callable[[], None]:
            def run() -> None:
                if model.editor is not None:
                    fn()

            return run

        keys: list[tuple[str, Callable[[], None]]] = [
            ("O", when_viewing(model.toggle_overlay)),
            ("A", when_viewing(model.auto_window)),
            ("W", when_viewing(model.reset_window)),
            ("F", viewer.view.fit),
            ("+", lambda: viewer.view.zoom_by(1.25)),
            ("=", lambda: viewer.view.zoom_by(1.25)),
            ("-", lambda: viewer.view.zoom_by(0.8)),
            ("Space", viewer.toggle_play),
            ("Right", lambda: model.step(1)),
            ("Left", lambda: model.step(-1)),
            ("PgDown", lambda: self.open_neighbour(1)),
            ("PgUp", lambda: self.open_neighbour(-1)),
            ("C", review.confirm_result),
            ("1", lambda: review.correct_diagnosis("normal")),
            ("2", lambda: review.correct_diagnosis("benign")),
            ("3", lambda: review.correct_diagnosis("malignant")),
            ("R", review.reject_mask),
            ("E", review.start_editing),
            ("B", when_editing(lambda: review.set_tool(Tool.BRUSH))),
            ("X", when_editing(lambda: review.set_tool(Tool.ERASER))),
            ("[", lambda: review.grow_brush(-2)),
            ("]", lambda: review.grow_brush(2)),
            ("S", when_editing(review.save_edited_mask)),
            ("Esc", when_editing(review.cancel_editing)),
            ("Ctrl+Z", review.undo_last),
        ]
        self.shortcuts: dict[str, QShortcut] = {}
        for key, fn in keys:
            shortcut = QShortcut(QKeySequence(key), self)
            shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            shortcut.activated.connect(fn)
            self.shortcuts[key] = shortcut

    def open_neighbour(self, step: int) -> None:
        case = self.app.viewer.case
        if case is None:
            return
        entry = self.app.worklist.neighbour(case.job.id, step)
        while entry is not None and entry.status != "done":
            entry = self.app.worklist.neighbour(entry.job_id, step)
        if entry is not None:
            self.app.viewer.open(entry.job_id)

    def _on_change(self, change: Change) -> None:
        if change is not Change.CASE:
            return
        case = self.app.viewer.case
        if case is None:
            self.patient.setText("No image open")
            self.details.setText("")
            return
        meta = case.meta
        name = person_name(meta.patient_name)
        self.patient.setText(name or case.job.path.name)
        entry = self.app.worklist.entry(case.job.id)
        parts = [
            f"ID {meta.patient_id}" if meta.patient_id else "",
            f"Study {study}" if (study := study_date(meta.study_date)) else "",
            case.job.path.name if name else "no patient data in the file",
            f"{len(case.frames)} analysed frame(s)" if len(case.frames) > 1 else "",
            f"AI: {shown_diagnosis(entry.diagnosis, entry.flags)}" if entry is not None else "",
        ]
        self.details.setText("   ·   ".join(p for p in parts if p))
        self.viewer.view.setFocus()


class MainWindow(QMainWindow):
    """The clinician's desktop over one `ClinicalApp`."""

    def __init__(self, app: ClinicalApp) -> None:
        super().__init__()
        self.app = app
        self.setWindowTitle(f"FAME Node — {app.config.node_name}")
        self.resize(1600, 960)

        self.worklist = WorklistPanel(app.worklist)
        self.viewer_page = ViewerPage(app)
        self.models = ModelsPanel(app.models, app.reviewer)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(self.worklist, "Worklist")
        self.tabs.addTab(self.viewer_page, "Viewer")
        self.tabs.addTab(self.models, "Models")
        self.federation = FederationPanel(FederationPanelModel(app.config))
        self.tabs.addTab(self.federation, "Federation")
        self.tabs.currentChanged.connect(
            lambda i: self.federation.refresh() if self.tabs.widget(i) is self.federation else None
        )
        for i, key in enumerate(("Ctrl+1", "Ctrl+2", "Ctrl+3")):
            self.tabs.setTabToolTip(i, f"{self.tabs.tabText(i)} ({key})")
            QShortcut(QKeySequence(key), self, lambda i=i: self.tabs.setCurrentIndex(i))
        tab_bar = self.tabs.tabBar()
        if tab_bar is not None:
            tab_bar.setDrawBase(False)
        corner = QWidget()
        corner_row = QHBoxLayout(corner)
        corner_row.setContentsMargins(0, 0, 14, 0)
        corner_label = QLabel(f"FAME Node  ·  {app.config.node_name}")
        corner_label.setProperty("role", "dim")
        corner_row.addWidget(corner_label)
        self.tabs.setCornerWidget(corner, Qt.Corner.TopRightCorner)
        self.setCentralWidget(self.tabs)

        bar = self.statusBar()
        self.service_label = QLabel()
        self.model_label = QLabel()
        self.queue_label = QLabel()
        self.reviewer_label = QLabel(f"Reviewer: {app.reviewer}")
        self.message_label = QLabel()
        if bar is not None:
            bar.setSizeGripEnabled(False)
            bar.addWidget(self.service_label)
            bar.addWidget(self.model_label)
            bar.addWidget(self.queue_label)
            bar.addWidget(self.message_label, 1)
            bar.addPermanentWidget(self.reviewer_label)

        self.worklist.opened.connect(self.open_case)
        self.viewer_page.review.message.connect(self.show_message)
        self.models.message.connect(self.show_message)
        app.status.changed.connect(self._on_status)

        self.worklist_timer = QTimer(self)
        self.worklist_timer.timeout.connect(self._poll_worklist)
        self.status_timer = QTimer(self)
        self.status_timer.timeout.connect(self._poll_status)

    @property
    def worklist_model(self) -> WorklistModel:
        return self.app.worklist

    @property
    def viewer_model(self) -> ViewerModel:
        return self.app.viewer

    def start(self) -> None:
        """Read the store and start polling it."""
        self.app.start()
        self._on_status(self.app.status.status)
        self.worklist_timer.start(WORKLIST_POLL_MS)
        self.status_timer.start(STATUS_POLL_MS)

    def open_case(self, job_id: int) -> bool:
        entry = self.app.worklist.entry(job_id)
        if entry is not None and entry.status != "done":
            self.show_message(f"{entry.file_name}: {entry.reason or entry.status}")
            return False
        try:
            self.app.viewer.open(job_id)
        except FameNodeError as exc:
            self.show_message(str(exc))
            return False
        self.tabs.setCurrentWidget(self.viewer_page)
        self.viewer_page.viewer.view.setFocus()
        return True

    def show_message(self, text: str) -> None:
        self.message_label.setText(text)

    def _poll_worklist(self) -> None:
        try:
            self.app.worklist.poll()
        except FameNodeError as exc:  # a locked or vanished store: say so, keep running
            self.show_message(f"Cannot read the store: {exc}")

    def _poll_status(self) -> None:
        try:
            self.app.status.poll()
            self.app.models.poll()
        except FameNodeError as exc:
            self.show_message(f"Cannot read the node status: {exc}")

    def _on_status(self, s: NodeStatus) -> None:
        if s.service_running:
            self.service_label.setText(
                f"<span style='color:#56b4e9'>●</span> Service running (pid {s.service_pid})"
            )
        else:
            self.service_label.setText("<span style='color:#e69f00'>○</span> Service not running")
        provider = provider_label(s.backend.provider) if s.backend.provider else "backend unknown"
        self.model_label.setText(
            f"Model {s.model or self.app.models.active_label or '—'} · {provider}"
        )
        c = s.counts
        self.queue_label.setText(
            f"Queue: {c.get('queued', 0)} waiting · {c.get('running', 0)} processing · "
            f"{c.get('done', 0)} done · {c.get('rejected', 0) + c.get('failed', 0)} rejected"
        )

    def closeEvent(self, event: QCloseEvent | None) -> None:
        self.worklist_timer.stop()
        self.status_timer.stop()
        super().closeEvent(event)


def build_window(app: ClinicalApp) -> MainWindow:
    """The themed main window over `app`, started (the QApplication must exist)."""
    qapp = QApplication.instance()
    if isinstance(qapp, QApplication):
        apply_theme(qapp)
    window = MainWindow(app)
    window.start()
    return window


def run_gui(config: NodeConfig, registry: ModelRegistryLike, reviewer: str | None = None) -> int:
    """Run the clinician GUI over the node configured by `config` until the window closes."""
    qapp = QApplication.instance() or QApplication(sys.argv[:1])
    qapp.setApplicationName("FAME Node")
    app = ClinicalApp(config, registry, reviewer)
    try:
        window = build_window(app)
        window.show()
        return int(qapp.exec())
    finally:
        app.close()
