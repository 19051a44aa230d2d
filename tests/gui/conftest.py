"""GUI tests: the real PyQt6 widgets, offscreen (QT_QPA_PLATFORM=offscreen), via pytest-qt.

pytest-qt is not auto-loaded (``-p no:pytest-qt`` in pyproject.toml): it refuses to start
the whole session when no Qt binding imports. It is registered here when PyQt6 imports,
and every GUI test module skips with the reason when it does not.

`processed_template` runs a real ``fame-node process`` over real images once per session
(BUSI test-split images where ../shared/data/busi exists, ultrasound DICOM files of
pydicom-data, a text file named .png); `processed_node` gives each test its own copy.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from appliance.config import NodeConfig
from tests.appliance.app.nodedata import node_config
from tests.conftest import BUSI_DIR, BUSI_MANIFEST, DEFAULT_BUNDLE
from tests.e2e.nodeutil import node_env, run_cli


def _qt_problem() -> str | None:
    try:
        import PyQt6.QtWidgets  # noqa: F401
    except ImportError as exc:
        return (
            f"PyQt6 cannot be imported ({exc}): install the 'gui' extra, and the Qt system "
            "libraries that .ci/run installs"
        )
    if importlib.util.find_spec("pytestqt") is None:
        return "pytest-qt is not installed; install the 'dev' extra"
    return None


QT_PROBLEM = _qt_problem()


def pytest_configure(config: pytest.Config) -> None:
    if QT_PROBLEM is None and not config.pluginmanager.has_plugin("pytestqt.plugin"):
        config.pluginmanager.import_plugin("pytestqt.plugin")


US_SAMPLES = ("JPGLosslessP14SV1_1s_1f_8b.dcm", "OBXXXX1A_rle_2frame.dcm", "US1_J2KR.dcm")


def busi_test_images(per_class: int) -> list[Path]:
    """The first `per_class` images of each class of BUSI's test split (none without BUSI)."""
    if not BUSI_MANIFEST.is_file():
        return []
    picked: dict[str, list[Path]] = {}
    with BUSI_MANIFEST.open(newline="") as fh:
        for row in csv.DictReader(fh):
            chosen = picked.setdefault(row["label"], [])
            if row["split"] == "test" and len(chosen) < per_class:
                chosen.append(BUSI_DIR / row["image"])
    return [p for label in ("malignant", "benign", "normal") for p in picked.get(label, [])]


def us_samples() -> list[Path]:
    from appliance.io.sample_data import ultrasound_sample_files

    return [p for p in ultrasound_sample_files() if p.name in US_SAMPLES]


@dataclass(frozen=True)
class ProcessedNode:
    config: NodeConfig
    outcomes: list[dict[str, Any]]  # `fame-node process --json`, one per input

    def outcome(self, name: str) -> dict[str, Any]:
        return next(o for o in self.outcomes if Path(o["path"]).name == name)

    @property
    def with_lesion(self) -> dict[str, Any]:
        """A done BUSI (else any) outcome whose first frame has a segmented lesion."""
        done = [o for o in self.outcomes if o["status"] == "done" and o["frames"]]
        lesion = [o for o in done if o["frames"][0]["lesion_area_px"] > 200]
        busi = [o for o in lesion if o["path"].endswith(".png")]
        if not lesion:
            pytest.fail("the model segmented no lesion on any test image")
        return (busi or lesion)[0]


@pytest.fixture(scope="session")
def processed_template(tmp_path_factory: pytest.TempPathFactory) -> ProcessedNode:
    if not (DEFAULT_BUNDLE / "manifest.json").is_file():
        pytest.skip(f"no model bundle at {DEFAULT_BUNDLE} (train one: make train)")
    inputs = tmp_path_factory.mktemp("inputs")
    bad = inputs / "scan-notes.png"
    bad.write_text("Patient moved during the scan; repeat the acquisition.\n")
    files = [*busi_test_images(1), *us_samples(), bad]
    root = tmp_path_factory.mktemp("template") / "node"
    proc = run_cli(node_env(root), "process", "--json", *map(str, files))
    if proc.returncode not in (0, 3):
        pytest.fail(f"fame-node process failed ({proc.returncode}): {proc.stderr[-2000:]}")
    outcomes = [json.loads(line) for line in proc.stdout.splitlines()]
    return ProcessedNode(node_config(root), outcomes)


@pytest.fixture
def processed_node(processed_template: ProcessedNode, tmp_path: Path) -> ProcessedNode:
    """A copy of the processed node of this session, for this test alone."""
    old = processed_template.config.paths.root
    new = tmp_path / "node"
    shutil.copytree(old, new)
    # The store keeps absolute paths of the results folders: point them at the copy.
    conn = sqlite3.connect(new / "fame-node.sqlite3")
    with conn:
        conn.execute(
            "UPDATE results SET result_dir = replace(result_dir, ?, ?)", (str(old), str(new))
        )
    conn.close()
    outcomes = json.loads(json.dumps(processed_template.outcomes).replace(str(old), str(new)))
    return ProcessedNode(node_config(new), outcomes)


@pytest.fixture
def make_window(qtbot: Any) -> Iterator[Callable[..., Any]]:
    """Build the real main window over a node: ``make_window(config, registry=None)``."""
    from PyQt6.QtWidgets import QApplication

    from appliance.app.models_panel import EventStoreRegistry
    from appliance.app.session import ClinicalApp
    from appliance.store.model_events import ModelEventStore
    from gui.app import build_window

    apps: list[ClinicalApp] = []
    stores: list[ModelEventStore] = []

    def make(config: NodeConfig, registry: Any = None, reviewer: str = "dr-test") -> Any:
        if registry is None:
            config.database_path.parent.mkdir(parents=True, exist_ok=True)
            events = ModelEventStore(config.database_path)
            stores.append(events)
            registry = EventStoreRegistry(events, "test-model@1.0")
        app = ClinicalApp(config, registry, reviewer)
        apps.append(app)
        window = build_window(app)
        qtbot.addWidget(window)
        window.show()
        window.activateWindow()  # keyboard shortcuts go to the active window only
        qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=5000)
        return window

    yield make
    for app in apps:
        app.close()
    for store in stores:
        store.close()
