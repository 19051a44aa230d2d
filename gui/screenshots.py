"""Screenshots of the real application for the documentation.

``python -m gui.screenshots --out docs/`` builds a node store by running the node's real
pipeline (the same parts as ``fame-node process``) over real images: BUSI test-split
images (where ../shared/data/busi exists), ultrasound DICOM files of pydicom-data, a
DICOM of another modality and a text file named .png (both rejected, with their reasons).
It records a few review decisions through the review service and the initial model
through the model registry, opens the real main window offscreen, and saves
``gui-worklist.png``, ``gui-viewer.png`` and ``gui-models.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PyQt6.QtWidgets import QApplication

from appliance.app.display import withheld
from appliance.app.session import ClinicalApp
from appliance.config import NodeConfig, PathsConfig
from appliance.errors import BundleError
from appliance.models.registry import ModelRegistry
from gui.app import MainWindow, build_window

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUSI = REPO_ROOT.parent / "shared" / "data" / "busi"
US_FILES = (
    "JPGLosslessP14SV1_1s_1f_8b.dcm",
    "US1_J2KR.dcm",
    "gdcm-US-ALOKA-16.dcm",
    "OBXXXX1A_rle_2frame.dcm",
)
OTHER_MODALITY = "MR2_J2KR.dcm"
BUSI_PER_CLASS = {"malignant": 4, "benign": 5, "normal": 3}
WINDOW_SIZE = (1600, 960)


def busi_images(busi: Path) -> list[Path]:
    """Test-split images, a few of each class; none when the data set is absent."""
    manifest = busi / "manifest.csv"
    if not manifest.is_file():
        print(f"BUSI not found at {busi}: screenshots without BUSI images", file=sys.stderr)
        return []
    picked: dict[str, list[Path]] = {label: [] for label in BUSI_PER_CLASS}
    with manifest.open(newline="") as fh:
        for row in csv.DictReader(fh):
            chosen = picked.get(row["label"])
            wanted = chosen is not None and len(chosen) < BUSI_PER_CLASS[row["label"]]
            if row["split"] == "test" and chosen is not None and wanted:
                chosen.append(busi / row["image"])
    # Interleave the classes, as a day's cases would arrive.
    out: list[Path] = []
    for i in range(max(BUSI_PER_CLASS.values())):
        out += [paths[i] for paths in picked.values() if i < len(paths)]
    return out


def sample_files(work: Path) -> list[Path]:
    from appliance.io.sample_data import pydicom_data_files

    by_name = {p.name: p for p in pydicom_data_files()}
    files = [by_name[n] for n in US_FILES if n in by_name]
    if OTHER_MODALITY in by_name:
        files.append(by_name[OTHER_MODALITY])
    notes = work / "scan-notes.png"
    notes.write_text("Patient moved during the scan; repeat the acquisition.\n")
    return [*files, notes]


def build_node(root: Path, busi: Path) -> NodeConfig:
    """Process the images into a node at `root` with the node's real pipeline."""
    from appliance.oneshot import process_paths
    from appliance.service import build_parts

    config = NodeConfig(paths=PathsConfig(root=root))
    inputs = root.parent / "received"
    inputs.mkdir(parents=True, exist_ok=True)
    files = busi_images(busi)
    files[len(files) // 2 : len(files) // 2] = sample_files(inputs)
    parts = build_parts(config, workers=1)
    try:
        for outcome in process_paths(parts, files):
            print(f"{outcome.status:<9} {Path(outcome.path).name}")
    finally:
        parts.queue.close()
        parts.results.close()
    return config


def record_reviews(app: ClinicalApp, n: int = 6) -> None:
    """The first `n` BUSI images reviewed as a radiologist would: the AI result confirmed
    where it matches BUSI's label, the diagnosis corrected to that label where not."""
    app.worklist.reload()
    done = [e for e in reversed(app.worklist.entries) if e.status == "done"]
    busi = [e for e in done if e.path.parent.name in BUSI_PER_CLASS][:n]
    for entry in busi:
        frames = [f.frame_index for f in entry.frames]
        truth = entry.path.parent.name
        if entry.diagnosis == truth and not withheld(entry.flags):  # nothing to confirm else
            app.review.confirm(entry.job_id, frames)
        else:
            app.review.correct_diagnosis(entry.job_id, frames, truth)
    app.worklist.reload()


def record_refusal(config: NodeConfig, registry: ModelRegistry) -> None:
    """Offer the registry a damaged copy of the bundle, as a corrupted download would be:
    it refuses it (checksum mismatch) and the models panel shows that with its reason."""
    damaged = config.paths.root.parent / "damaged-bundle"
    shutil.copytree(config.models.bundle, damaged, dirs_exist_ok=True)
    model = damaged / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with contextlib.suppress(BundleError):  # refused, as expected: recorded in the history
        registry.install(damaged, "federation", "update received from the federation")


def pick_viewer_case(app: ClinicalApp) -> int | None:
    """A BUSI case not reviewed yet with a segmented lesion, preferring one classified
    malignant with high confidence."""
    best: tuple[tuple[int, int, float], int] | None = None
    for record in app.results.list_results(limit=1000):
        r = record.result
        if not record.job.path.name.endswith(".png") or not r.lesion_area_px:
            continue
        entry = app.worklist.entry(r.job_id)
        unreviewed = int(entry is not None and entry.review_state == "unreviewed")
        score = (unreviewed, int(r.diagnosis == "malignant"), r.confidence or 0.0)
        if best is None or score > best[0]:
            best = (score, r.job_id)
    return None if best is None else best[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO_ROOT / "docs")
    p.add_argument("--busi", type=Path, default=DEFAULT_BUSI)
    p.add_argument("--node", type=Path, default=None, help="keep the node here (default: temp)")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = (args.node or Path(tmp) / "node").resolve()
        config = build_node(root, args.busi)
        existing = QApplication.instance()
        qapp = existing if isinstance(existing, QApplication) else QApplication(sys.argv[:1])
        registry = ModelRegistry(config)
        registry.ensure_initial()  # what the service records when it first starts
        record_refusal(config, registry)
        app = ClinicalApp(config, registry, reviewer="dr.lee")
        try:
            record_reviews(app)
            window = build_window(app)
            window.resize(*WINDOW_SIZE)
            window.show()
            qapp.processEvents()
            args.out.mkdir(parents=True, exist_ok=True)

            window.tabs.setCurrentWidget(window.worklist)
            first = next((e for e in app.worklist.visible if e.status == "done"), None)
            if first is not None:
                window.worklist.select_job(first.job_id)
            _save(window, qapp, args.out / "gui-worklist.png")

            job = pick_viewer_case(app)
            if job is not None:
                window.open_case(job)
                if first is not None:
                    window.worklist.select_job(job)
            _save(window, qapp, args.out / "gui-viewer.png")

            window.tabs.setCurrentWidget(window.models)
            _save(window, qapp, args.out / "gui-models.png")
            window.close()
        finally:
            app.close()
            registry.close()
    return 0


def _save(window: MainWindow, qapp: QApplication, path: Path) -> None:
    for _ in range(3):
        qapp.processEvents()
    if not window.grab().save(str(path)):
        raise OSError(f"cannot write {path}")
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
