"""The application model and the node never import Qt: the GUI is a thin view over them."""

from __future__ import annotations

import ast
from pathlib import Path

APPLIANCE = Path(__file__).resolve().parents[3] / "appliance"
QT_PACKAGES = {"PyQt5", "PyQt6", "PySide2", "PySide6", "qtpy", "sip"}


def qt_imports(source: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"), str(source))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        found += [n for n in names if n.split(".")[0] in QT_PACKAGES]
    return found


def test_no_module_under_appliance_imports_qt() -> None:
    sources = sorted(APPLIANCE.rglob("*.py"))
    assert any(p.parent.name == "app" for p in sources)  # the walk sees the app model
    # `fame-node gui` imports PyQt6 inside its handler only (checked below).
    command = APPLIANCE / "commands" / "gui.py"
    offenders = {
        str(p.relative_to(APPLIANCE.parent)): names
        for p in sources
        if (names := qt_imports(p)) and p != command
    }
    assert offenders == {}


def test_the_gui_command_imports_qt_only_inside_its_handler() -> None:
    command = APPLIANCE / "commands" / "gui.py"
    tree = ast.parse(command.read_text(encoding="utf-8"))
    top_level = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    assert not any(qt_imports_of(n) for n in top_level)


def qt_imports_of(node: ast.Import | ast.ImportFrom) -> bool:
    names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
    return any(n.split(".")[0] in QT_PACKAGES | {"gui"} for n in names)
