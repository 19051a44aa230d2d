"""The image view: the frame with the lesion mask as a fill and / or outline.

A QGraphicsView with three layers (the windowed frame, the mask fill, the mask outline
drawn with a cosmetic pen so it stays crisp at any zoom) and the corner annotations of
radiology viewers. Mouse: wheel zooms at the cursor, left-drag pans (paints when the mask
is being redrawn), right-drag sets window / level, double-click fits. A view over
`appliance.app.viewer.ViewerModel`; the pixels come from its pure functions.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PyQt6.QtCore import QPointF, QRectF, Qt, pyqtSignal
from PyQt6.QtGui import (
    QBrush,
    QColor,
    QFont,
    QImage,
    QMouseEvent,
    QPainter,
    QPainterPath,
    QPen,
    QPixmap,
    QResizeEvent,
    QWheelEvent,
)
from PyQt6.QtWidgets import (
    QGraphicsEllipseItem,
    QGraphicsPathItem,
    QGraphicsPixmapItem,
    QGraphicsScene,
    QGraphicsView,
    QWidget,
)

from appliance.app.display import MODEL_MASK_RGB, person_name
from appliance.app.imaging import mask_contours, mask_rgba, window_level
from appliance.app.viewer import Change, ViewerModel
from gui.theme import TEXT_DIM, qcolor

MIN_ZOOM, MAX_ZOOM = 0.05, 40.0


def to_qimage(array: NDArray[np.uint8]) -> QImage:
    """A deep-copied QImage of a grey (H, W), RGB (H, W, 3) or RGBA (H, W, 4) uint8 array."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    h, w = a.shape[:2]
    if a.ndim == 2:
        fmt, channels = QImage.Format.Format_Grayscale8, 1
    elif a.shape[2] == 3:
        fmt, channels = QImage.Format.Format_RGB888, 3
    elif a.shape[2] == 4:
        fmt, channels = QImage.Format.Format_RGBA8888, 4
    else:
        raise ValueError(f"expected a grey, RGB or RGBA image, got shape {a.shape}")
    return QImage(a.tobytes(), w, h, w * channels, fmt).copy()


def contour_path(contours: list[NDArray[np.float64]]) -> QPainterPath:
    path = QPainterPath()
    for c in contours:
        path.moveTo(QPointF(float(c[0, 0]), float(c[0, 1])))
        for x, y in c[1:]:
            path.lineTo(QPointF(float(x), float(y)))
        path.closeSubpath()
    return path


class ImageView(QGraphicsView):
    """The frame, its mask layers and corner annotations (see the module docstring)."""

    zoom_changed = pyqtSignal(float)

    def __init__(self, model: ViewerModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.setScene(QGraphicsScene(self))
        self.image_item = QGraphicsPixmapItem()
        self.image_item.setTransformationMode(Qt.TransformationMode.FastTransformation)
        self.fill_item = QGraphicsPixmapItem()
        self.outline_item = QGraphicsPathItem()
        self.cursor_item = QGraphicsEllipseItem()
        self.cursor_item.setPen(self._pen(QColor(255, 255, 255, 200), 1.0))
        self.cursor_item.setVisible(False)
        scene = self.scene()
        if scene is not None:
            for z, item in enumerate(
                (self.image_item, self.fill_item, self.outline_item, self.cursor_item)
            ):
                item.setZValue(z)
                scene.addItem(item)
        self.setBackgroundBrush(QBrush(QColor("#000000")))
        self.setRenderHints(QPainter.RenderHint.Antialiasing)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setResizeAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setToolTip(
            "Wheel: zoom · Left-drag: pan · Right-drag: window / level · Double-click: fit"
        )
        self._fit = True
        self._wl_drag: QPointF | None = None
        self._painting = False
        model.changed.connect(self._on_change)

    # -- model -> layers ------------------------------------------------------------------
    def _on_change(self, change: Change) -> None:
        if change in (Change.CASE, Change.FRAME):
            self._update_image()
            self._update_mask()
            if change is Change.CASE:
                self.fit()
        elif change is Change.DISPLAY:
            self._update_image()
            self._update_mask()
        else:
            self._update_mask()
        self._update_cursor_mode()
        viewport = self.viewport()
        if viewport is not None:
            viewport.update()

    def _update_image(self) -> None:
        frame = self.model.frame
        if frame is None:
            self.image_item.setPixmap(QPixmap())
            return
        c, w = self.model.display.window
        shown = window_level(frame.image, c, w)
        self.image_item.setPixmap(QPixmap.fromImage(to_qimage(shown)))
        scene = self.scene()
        if scene is not None:
            scene.setSceneRect(QRectF(0, 0, frame.image.shape[1], frame.image.shape[0]))

    def _update_mask(self) -> None:
        d = self.model.display
        case = self.model.case
        mask = self.model.shown_mask
        visible = d.overlay and mask is not None and case is not None and not case.overlay_only
        self.fill_item.setVisible(visible and d.fill)
        self.outline_item.setVisible(visible and d.outline)
        if not visible or mask is None:
            return
        rgb = self.model.mask_rgb
        self.fill_item.setPixmap(QPixmap.fromImage(to_qimage(mask_rgba(mask, rgb, 1.0))))
        self.fill_item.setOpacity(d.opacity)
        self.outline_item.setPath(contour_path(mask_contours(mask)))
        self.outline_item.setPen(self._pen(qcolor(rgb), 2.0))

    @staticmethod
    def _pen(colour: QColor, width: float) -> QPen:
        pen = QPen(colour, width)
        pen.setCosmetic(True)
        return pen

    # -- zoom -----------------------------------------------------------------------------
    @property
    def zoom(self) -> float:
        return self.transform().m11()

    def fit(self) -> None:
        self._fit = True
        scene = self.scene()
        if scene is not None and not scene.sceneRect().isEmpty():
            self.fitInView(scene.sceneRect(), Qt.AspectRatioMode.KeepAspectRatio)
        self.zoom_changed.emit(self.zoom)

    def zoom_by(self, factor: float) -> None:
        target = min(max(self.zoom * factor, MIN_ZOOM), MAX_ZOOM)
        self._fit = False
        self.scale(target / self.zoom, target / self.zoom)
        self.zoom_changed.emit(self.zoom)

    def resizeEvent(self, event: QResizeEvent | None) -> None:
        super().resizeEvent(event)
        if self._fit:
            self.fit()

    def wheelEvent(self, event: QWheelEvent | None) -> None:
        if event is None:
            return
        steps = event.angleDelta().y() / 120
        if steps:
            self.zoom_by(1.15**steps)
        event.accept()

    # -- mouse: pan, window / level, painting ----------------------------------------------
    def _image_point(self, event: QMouseEvent) -> QPointF:
        return self.mapToScene(event.position().toPoint())

    def mousePressEvent(self, event: QMouseEvent | None) -> None:
        if event is None:
            return
        editor = self.model.editor
        if event.button() == Qt.MouseButton.RightButton:
            self._wl_drag = event.position()
            event.accept()
            return
        if editor is not None and event.button() == Qt.MouseButton.LeftButton:
            p = self._image_point(event)
            self._painting = True
            editor.begin_stroke(p.x() - 0.5, p.y() - 0.5)
            event.accept()
            return
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event: QMouseEvent | None) -> None:
        if event is None:
            return
        editor = self.model.editor
        if editor is not None:
            p = self._image_point(event)
            r = editor.radius
            self.cursor_item.setRect(QRectF(p.x() - r - 0.5, p.y() - r - 0.5, 2 * r + 1, 2 * r + 1))
            if self._painting:
                editor.extend_stroke(p.x() - 0.5, p.y() - 0.5)
                event.accept()
                return
        if self._wl_drag is not None:
            delta = event.position() - self._wl_drag
            self._wl_drag = event.position()
            self.model.adjust_window(-delta.y(), delta.x())
            event.accept()
            return
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event: QMouseEvent | None) -> None:
        if event is None:
            return
        if self._painting and event.button() == Qt.MouseButton.LeftButton:
            self._painting = False
            editor = self.model.editor
            if editor is not None:
                editor.end_stroke()
            event.accept()
            return
        if event.button() == Qt.MouseButton.RightButton:
            self._wl_drag = None
            event.accept()
            return
        super().mouseReleaseEvent(event)

    def mouseDoubleClickEvent(self, event: QMouseEvent | None) -> None:
        if self.model.editor is None:
            self.fit()
        elif event is not None:
            event.accept()

    def _update_cursor_mode(self) -> None:
        editing = self.model.editor is not None
        self.cursor_item.setVisible(editing)
        self.setDragMode(
            QGraphicsView.DragMode.NoDrag if editing else QGraphicsView.DragMode.ScrollHandDrag
        )
        viewport = self.viewport()
        if viewport is not None:
            viewport.setCursor(
                Qt.CursorShape.CrossCursor if editing else Qt.CursorShape.OpenHandCursor
            )

    # -- corner annotations ----------------------------------------------------------------
    def drawForeground(self, painter: QPainter | None, rect: QRectF) -> None:
        super().drawForeground(painter, rect)
        case, frame = self.model.case, self.model.frame
        viewport = self.viewport()
        if painter is None or viewport is None:
            return
        painter.save()
        painter.resetTransform()
        area = QRectF(viewport.rect()).adjusted(14, 10, -14, -10)
        font = QFont(self.font())
        font.setPointSizeF(9.5)
        painter.setFont(font)
        if case is None or frame is None:
            painter.setPen(QColor(TEXT_DIM))
            painter.drawText(
                QRectF(viewport.rect()),
                Qt.AlignmentFlag.AlignCenter,
                "Select an image in the worklist (double-click or Enter) to view it here.",
            )
            painter.restore()
            return
        meta, job = case.meta, case.job
        name = person_name(meta.patient_name) or "No patient data in the file"
        study = meta.study_date or "—"
        if len(study) == 8 and study.isdigit():
            study = f"{study[:4]}-{study[4:6]}-{study[6:]}"
        top_left = [name, f"ID {meta.patient_id or '—'}", f"Study {study}"]
        n = len(case.frames)
        top_right = [
            job.path.name,
            f"{meta.modality or meta.source_format.upper()}"
            + (f" · {meta.manufacturer}" if meta.manufacturer else ""),
            f"Frame {frame.frame_index + 1} of {meta.n_frames_total}"
            + (f" · analysed {self.model.position + 1}/{n}" if n > 1 else ""),
        ]
        c, w = self.model.display.window
        spacing = meta.pixel_spacing_mm
        bottom_left = [
            f"W {w:.0f}  L {c:.0f}",
            f"Zoom {self.zoom * 100:.0f} %",
            f"{spacing[1]:.3f} mm/px" if spacing else "Not calibrated: sizes in px",
        ]
        self._corner(painter, area, top_left, Qt.AlignmentFlag.AlignLeft, top=True, bold=0)
        self._corner(painter, area, top_right, Qt.AlignmentFlag.AlignRight, top=True)
        self._corner(painter, area, bottom_left, Qt.AlignmentFlag.AlignLeft, top=False)
        if case.note:
            painter.setPen(qcolor(MODEL_MASK_RGB))
            painter.drawText(
                area, Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignBottom, case.note
            )
        painter.restore()

    @staticmethod
    def _corner(
        painter: QPainter,
        area: QRectF,
        lines: list[str],
        align: Qt.AlignmentFlag,
        *,
        top: bool,
        bold: int | None = None,
    ) -> None:
        metrics = painter.fontMetrics()
        step = metrics.height() + 2
        y = area.top() if top else area.bottom() - step * len(lines)
        base_font = painter.font()
        for i, line in enumerate(lines):
            font = QFont(base_font)
            if i == bold:
                font.setWeight(QFont.Weight.Bold)
            painter.setFont(font)
            box = QRectF(area.left(), y + i * step, area.width(), step)
            flags = align | Qt.AlignmentFlag.AlignVCenter
            painter.setPen(QColor(0, 0, 0, 220))  # a shadow keeps text legible on bright tissue
            painter.drawText(box.translated(1, 1), flags, line)
            painter.setPen(QColor("#e8e8e8"))
            painter.drawText(box, flags, line)
        painter.setFont(base_font)
