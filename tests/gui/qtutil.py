"""Small helpers for driving and reading the real widgets in GUI tests."""

from __future__ import annotations

import numpy as np
from PyQt6.QtCore import QPointF, Qt
from PyQt6.QtGui import QImage, QMouseEvent
from PyQt6.QtWidgets import QApplication, QWidget

from appliance.app.worklist import Column
from gui.app import MainWindow
from gui.worklist import COLUMNS


def grab(widget: QWidget) -> np.ndarray:
    """What `widget` renders, as an (H, W, 3) uint8 array."""
    image = widget.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    ptr = image.constBits()
    if ptr is None:
        raise RuntimeError("the grabbed image has no pixels")
    ptr.setsize(image.sizeInBytes())
    rows = np.frombuffer(bytes(ptr), np.uint8).reshape(image.height(), image.bytesPerLine())
    return rows[:, : image.width() * 3].reshape(image.height(), image.width(), 3).copy()


def table_rows(window: MainWindow) -> list[dict[Column, str]]:
    """The worklist table as shown: one dict of cell texts per row."""
    model = window.worklist.table_model
    return [
        {column: str(model.data(model.index(row, COLUMNS.index(column)))) for column in COLUMNS}
        for row in range(model.rowCount())
    ]


def drag(widget: QWidget, points: list[tuple[float, float]]) -> None:
    """A left-button drag through `points` (widget coordinates), as a user would draw."""
    left = Qt.MouseButton.LeftButton
    none = Qt.MouseButton.NoButton

    def send(
        kind: QMouseEvent.Type,
        p: tuple[float, float],
        button: Qt.MouseButton,
        buttons: Qt.MouseButton,
    ) -> None:
        pos = QPointF(*p)
        event = QMouseEvent(
            kind, pos, widget.mapToGlobal(pos), button, buttons, Qt.KeyboardModifier.NoModifier
        )
        QApplication.sendEvent(widget, event)

    send(QMouseEvent.Type.MouseButtonPress, points[0], left, left)
    for p in points[1:]:
        send(QMouseEvent.Type.MouseMove, p, none, left)
    send(QMouseEvent.Type.MouseButtonRelease, points[-1], left, none)
