"""The viewer panel: the image view with its display toolbar and the frame slider / cine.

Toolbar: overlay on / off, fill, outline, opacity, the mask's legend, window / level and
fit. Below the image, for clips: play / pause, the frame slider and the cine speed. A
view over `appliance.app.viewer.ViewerModel`; the image itself is `gui.image_view`.
"""

from __future__ import annotations

from PyQt6.QtCore import Qt, QTimer
from PyQt6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from appliance.app.display import REVIEWED_MASK_RGB
from appliance.app.viewer import Change, ViewerModel
from gui.image_view import ImageView
from gui.theme import TEXT_DIM, css


class ViewerPanel(QWidget):
    """The view with its display toolbar and the frame slider / cine controls."""

    def __init__(self, model: ViewerModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.view = ImageView(model)

        self.overlay = QPushButton("Overlay")
        self.overlay.setCheckable(True)
        self.overlay.setChecked(True)
        self.overlay.setToolTip("Show or hide the lesion mask (O)")
        self.fill = QCheckBox("Fill")
        self.fill.setChecked(True)
        self.fill.setToolTip("Translucent fill of the lesion")
        self.outline = QCheckBox("Outline")
        self.outline.setChecked(True)
        self.outline.setToolTip("Outline of the lesion")
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(round(model.display.opacity * 100))
        self.opacity.setFixedWidth(120)
        self.opacity.setToolTip("Fill opacity")
        self.opacity_label = QLabel()
        self.opacity_label.setProperty("role", "dim")
        self.opacity_label.setFixedWidth(40)
        self.legend = QLabel()
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        self.auto_wl = QPushButton("Auto W/L")
        self.auto_wl.setToolTip("Window / level from the image's own grey range (A)")
        self.reset_wl = QPushButton("Reset W/L")
        self.reset_wl.setToolTip("The full grey range, as stored (W)")
        self.fit = QPushButton("Fit")
        self.fit.setToolTip("Fit the image to the window (F, or double-click the image)")

        tools = QHBoxLayout()
        tools.setSpacing(8)
        tools.addWidget(self.overlay)
        tools.addWidget(self.fill)
        tools.addWidget(self.outline)
        opacity_caption = QLabel("Opacity")
        opacity_caption.setProperty("role", "dim")
        tools.addWidget(opacity_caption)
        tools.addWidget(self.opacity)
        tools.addWidget(self.opacity_label)
        tools.addWidget(self.legend)
        tools.addStretch(1)
        for b in (self.auto_wl, self.reset_wl, self.fit):
            tools.addWidget(b)

        self.play = QPushButton("▶ Play")
        self.play.setCheckable(True)
        self.play.setToolTip("Cine: play the analysed frames (Space)")
        self.frame_slider = QSlider(Qt.Orientation.Horizontal)
        self.frame_slider.setToolTip("Frame (← / →)")
        self.frame_label = QLabel()
        self.frame_label.setProperty("role", "dim")
        self.fps = QSpinBox()
        self.fps.setRange(1, 30)
        self.fps.setValue(6)
        self.fps.setSuffix(" fps")
        self.fps.setToolTip("Cine speed")
        self.cine_bar = QWidget()
        cine = QHBoxLayout(self.cine_bar)
        cine.setContentsMargins(0, 0, 0, 0)
        cine.addWidget(self.play)
        cine.addWidget(self.frame_slider, 1)
        cine.addWidget(self.frame_label)
        cine.addWidget(self.fps)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(6)
        layout.addLayout(tools)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.cine_bar)

        self._timer = QTimer(self)
        self._timer.timeout.connect(lambda: model.step(1, wrap=True))
        self.overlay.toggled.connect(lambda on: model.set_display(overlay=on))
        self.fill.toggled.connect(lambda on: model.set_display(fill=on))
        self.outline.toggled.connect(lambda on: model.set_display(outline=on))
        self.opacity.valueChanged.connect(lambda v: model.set_display(opacity=v / 100))
        self.auto_wl.clicked.connect(model.auto_window)
        self.reset_wl.clicked.connect(model.reset_window)
        self.fit.clicked.connect(self.view.fit)
        self.frame_slider.valueChanged.connect(model.set_position)
        self.play.toggled.connect(self._on_play)
        self.fps.valueChanged.connect(lambda v: self._timer.setInterval(1000 // v))
        self.view.zoom_changed.connect(lambda _z: self._viewport_update())
        model.changed.connect(self._on_change)
        self._on_change(Change.CASE)

    def _viewport_update(self) -> None:
        viewport = self.view.viewport()
        if viewport is not None:
            viewport.update()

    def toggle_play(self) -> None:
        if self.model.n_frames > 1:
            self.play.toggle()

    def _on_play(self, on: bool) -> None:
        self.play.setText("❚❚ Pause" if on else "▶ Play")
        if on:
            self._timer.start(1000 // self.fps.value())
        else:
            self._timer.stop()

    def _on_change(self, change: Change) -> None:
        d = self.model.display
        for widget, value in (
            (self.overlay, d.overlay),
            (self.fill, d.fill),
            (self.outline, d.outline),
        ):
            if widget.isChecked() != value:
                widget.blockSignals(True)
                widget.setChecked(value)
                widget.blockSignals(False)
        if self.opacity.value() != round(d.opacity * 100):
            self.opacity.blockSignals(True)
            self.opacity.setValue(round(d.opacity * 100))
            self.opacity.blockSignals(False)
        self.opacity_label.setText(f"{d.opacity * 100:.0f} %")
        rgb = self.model.mask_rgb
        who = "Clinician's mask" if rgb == REVIEWED_MASK_RGB else "AI lesion mask"
        self.legend.setText(
            f"<span style='color:{css(rgb)}; font-size:13pt'>■</span>"
            f"<span style='color:{TEXT_DIM}'> {who}</span>"
        )
        n = self.model.n_frames
        self.cine_bar.setVisible(n > 1)
        if change in (Change.CASE, Change.FRAME):
            if change is Change.CASE and self.play.isChecked():
                self.play.setChecked(False)
            self.frame_slider.blockSignals(True)
            self.frame_slider.setRange(0, max(n - 1, 0))
            self.frame_slider.setValue(self.model.position)
            self.frame_slider.blockSignals(False)
            frame = self.model.frame
            self.frame_label.setText(
                ""
                if frame is None
                else f"{self.model.position + 1} / {n}  (file frame {frame.frame_index + 1})"
            )
