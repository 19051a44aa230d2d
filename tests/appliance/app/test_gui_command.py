"""``fame-node gui`` without PyQt6: a clear message, exit code 2, the node unaffected."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from appliance.cli import main


def test_without_pyqt6_the_command_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAME_NODE_PATHS__ROOT", str(tmp_path / "node"))
    monkeypatch.setitem(sys.modules, "PyQt6.QtWidgets", None)  # import now raises
    assert main(["gui"]) == 2
    err = capsys.readouterr().err
    assert "cannot load PyQt6" in err and "pip install 'fame-node[gui]'" in err


def test_gui_is_a_registered_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["gui", "--help"])
    assert "--reviewer" in capsys.readouterr().out
