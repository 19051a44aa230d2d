"""The federation page: connection, rounds, privacy budget, and the global models received.

A thin view over `appliance.app.federation_panel.FederationPanelModel`: a header with the
SuperNode's connection, rounds joined / declined and the epsilon spent against the budget
(a bar), and one row per global model received: run and round, the held-out figures of the
global and the running model, and what became of it (the version deployed, or refused and
why). `refresh` re-reads the store.
"""

from __future__ import annotations

from PyQt6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QProgressBar,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from appliance.app.display import OKABE_ITO, local_time
from appliance.app.federation_panel import FederationPanelModel, heldout_text
from gui.theme import qcolor

COLUMNS = ("When", "Run", "Round", "Global model (held-out)", "Running model", "Decision", "Why")
DECISION_COLOURS = {"deployed": OKABE_ITO["bluish_green"], "refused": OKABE_ITO["vermillion"]}


class FederationPanel(QWidget):
    def __init__(self, model: FederationPanelModel) -> None:
        super().__init__()
        self.model = model
        layout = QVBoxLayout(self)
        self.connection = QLabel()
        self.connection.setProperty("role", "title")
        self.rounds = QLabel()
        self.budget = QProgressBar()
        self.budget.setRange(0, 1000)
        self.budget.setTextVisible(True)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setWordWrap(True)
        header = self.table.horizontalHeader()
        if header is not None:
            header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
            header.setStretchLastSection(True)
        for widget in (self.connection, self.rounds, self.budget):
            layout.addWidget(widget)
        layout.addWidget(QLabel("Global models received"))
        layout.addWidget(self.table, 1)
        self.refresh()

    def refresh(self) -> None:
        view = self.model.refresh()
        self.connection.setText(view.connection)
        self.rounds.setText(
            f"Rounds trained: {view.rounds_joined}   ·   declined: {view.rounds_declined}"
        )
        self.budget.setValue(round(1000 * view.budget_share))
        self.budget.setFormat(
            f"Privacy budget: epsilon {view.epsilon_spent:.3f} of {view.epsilon_budget:g} "
            f"spent (delta {view.delta:g})"
        )
        self.table.setRowCount(len(view.models))
        for row, d in enumerate(view.models):
            decision = (
                f"Deployed as {d.model}" if d.decision == "deployed" else "Refused: kept model"
            )
            cells = (
                local_time(d.at),
                d.run_id,
                str(d.model_round),
                heldout_text(d.figures, "global"),
                heldout_text(d.figures, "running"),
                decision,
                d.reason,
            )
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if col == 5:
                    item.setForeground(qcolor(DECISION_COLOURS[d.decision]))
                self.table.setItem(row, col, item)
        self.table.resizeRowsToContents()
