"""The dark theme of radiology viewers: near-black surfaces, quiet chrome, clear text.

The image is the brightest thing on screen; panels stay dark grey so they do not dazzle
in a dimmed reading room. Colours of findings come from `appliance.app.display`.
"""

from __future__ import annotations

from PyQt6.QtGui import QColor, QFont, QPalette
from PyQt6.QtWidgets import QApplication

from appliance.app.display import RGB

BG = "#111417"  # window, viewer background
SURFACE = "#1a1e23"  # panels, tables
SURFACE_ALT = "#20252b"  # alternate rows, inputs
RAISED = "#272d34"  # buttons, headers
BORDER = "#323a43"
TEXT = "#e4e7eb"
TEXT_DIM = "#98a2ad"
ACCENT = "#0072b2"  # Okabe-Ito blue: selection, focus, primary action
ACCENT_HI = "#2b8fd0"


def qcolor(rgb: RGB, alpha: int = 255) -> QColor:
    return QColor(rgb[0], rgb[1], rgb[2], alpha)


def css(rgb: RGB) -> str:
    return f"rgb({rgb[0]}, {rgb[1]}, {rgb[2]})"


STYLESHEET = f"""
QWidget {{ background: {BG}; color: {TEXT}; font-size: 10pt; }}
QMainWindow::separator {{ background: {BORDER}; width: 1px; height: 1px; }}
QToolTip {{ background: {RAISED}; color: {TEXT}; border: 1px solid {BORDER}; padding: 4px; }}
QLabel {{ background: transparent; }}
QLabel[role="dim"] {{ color: {TEXT_DIM}; }}
QLabel[role="heading"] {{ color: {TEXT_DIM}; font-size: 8.5pt; font-weight: 600;
    letter-spacing: 1px; padding-top: 6px; }}
QLabel[role="title"] {{ font-size: 12pt; font-weight: 600; }}
QFrame[role="panel"] {{ background: {SURFACE}; border: 1px solid {BORDER}; border-radius: 4px; }}
QFrame[role="banner"] {{ background: {SURFACE}; border-bottom: 1px solid {BORDER}; }}
QTabWidget::pane {{ border: none; background: {BG}; }}
QTabBar {{ background: {SURFACE}; }}
QTabBar::tab {{ background: transparent; color: {TEXT_DIM}; padding: 8px 18px;
    border: none; border-bottom: 2px solid transparent; font-weight: 600; }}
QTabBar::tab:selected {{ color: {TEXT}; border-bottom: 2px solid {ACCENT_HI}; }}
QTabBar::tab:hover {{ color: {TEXT}; }}
QPushButton, QToolButton {{ background: {RAISED}; color: {TEXT}; border: 1px solid {BORDER};
    border-radius: 4px; padding: 5px 12px; }}
QPushButton:hover, QToolButton:hover {{ border-color: {ACCENT_HI}; }}
QPushButton:pressed, QToolButton:pressed {{ background: {SURFACE_ALT}; }}
QPushButton:checked, QToolButton:checked {{ background: {ACCENT}; border-color: {ACCENT_HI}; }}
QPushButton:disabled, QToolButton:disabled {{ color: #5c6670; border-color: {SURFACE_ALT}; }}
QPushButton[role="primary"] {{ background: {ACCENT}; border-color: {ACCENT_HI}; font-weight: 600; }}
QPushButton[role="primary"]:disabled {{ background: {RAISED}; }}
QPushButton[role="danger"] {{ border-color: #8a4a1a; }}
QLineEdit, QComboBox, QDateEdit, QSpinBox {{ background: {SURFACE_ALT}; color: {TEXT};
    border: 1px solid {BORDER}; border-radius: 4px; padding: 4px 6px;
    selection-background-color: {ACCENT}; }}
QLineEdit:focus, QComboBox:focus, QDateEdit:focus {{ border-color: {ACCENT_HI}; }}
QComboBox QAbstractItemView {{ background: {SURFACE_ALT}; border: 1px solid {BORDER};
    selection-background-color: {ACCENT}; }}
QCheckBox {{ background: transparent; spacing: 6px; }}
QCheckBox::indicator {{ width: 13px; height: 13px; border: 1px solid #5c6670;
    border-radius: 3px; background: {SURFACE_ALT}; }}
QCheckBox::indicator:checked {{ background: {ACCENT_HI}; border-color: {ACCENT_HI}; }}
QTableView {{ background: {SURFACE}; alternate-background-color: {SURFACE_ALT};
    gridline-color: transparent; border: 1px solid {BORDER}; border-radius: 4px;
    selection-background-color: #17415f; selection-color: {TEXT}; }}
QTableView::item {{ padding: 0 6px; border: none; }}
QHeaderView::section {{ background: {RAISED}; color: {TEXT_DIM}; border: none;
    border-right: 1px solid {BORDER}; border-bottom: 1px solid {BORDER};
    padding: 6px 8px; font-weight: 600; }}
QScrollBar:vertical {{ background: {SURFACE}; width: 10px; margin: 0; }}
QScrollBar::handle:vertical {{ background: {BORDER}; border-radius: 4px; min-height: 24px; }}
QScrollBar:horizontal {{ background: {SURFACE}; height: 10px; margin: 0; }}
QScrollBar::handle:horizontal {{ background: {BORDER}; border-radius: 4px; min-width: 24px; }}
QScrollBar::add-line, QScrollBar::sub-line {{ width: 0; height: 0; }}
QSlider::groove:horizontal {{ height: 4px; background: {BORDER}; border-radius: 2px; }}
QSlider::handle:horizontal {{ background: {TEXT}; width: 12px; margin: -5px 0;
    border-radius: 6px; }}
QSlider::sub-page:horizontal {{ background: {ACCENT_HI}; border-radius: 2px; }}
QStatusBar {{ background: {SURFACE}; color: {TEXT_DIM}; border-top: 1px solid {BORDER}; }}
QStatusBar QLabel {{ color: {TEXT_DIM}; padding: 0 8px; }}
QProgressBar {{ background: {SURFACE_ALT}; border: none; border-radius: 3px; height: 6px; }}
QListWidget {{ background: {SURFACE}; border: 1px solid {BORDER}; border-radius: 4px; }}
QMessageBox {{ background: {SURFACE}; }}
QGraphicsView {{ background: #000; border: none; }}
"""


def apply_theme(app: QApplication) -> None:
    """The dark palette and style sheet, on the whole application."""
    app.setStyle("Fusion")
    palette = QPalette()
    roles = {
        QPalette.ColorRole.Window: BG,
        QPalette.ColorRole.WindowText: TEXT,
        QPalette.ColorRole.Base: SURFACE,
        QPalette.ColorRole.AlternateBase: SURFACE_ALT,
        QPalette.ColorRole.Text: TEXT,
        QPalette.ColorRole.Button: RAISED,
        QPalette.ColorRole.ButtonText: TEXT,
        QPalette.ColorRole.Highlight: ACCENT,
        QPalette.ColorRole.HighlightedText: TEXT,
        QPalette.ColorRole.ToolTipBase: RAISED,
        QPalette.ColorRole.ToolTipText: TEXT,
        QPalette.ColorRole.PlaceholderText: TEXT_DIM,
    }
    for role, colour in roles.items():
        palette.setColor(role, QColor(colour))
    app.setPalette(palette)
    font = QFont(app.font())
    font.setPointSizeF(10.0)
    app.setFont(font)
    app.setStyleSheet(STYLESHEET)
