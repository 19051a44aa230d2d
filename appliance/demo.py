"""`fame-node demo`: a node on its built-in defaults, fed real and broken files.

It sets up a fresh node folder, starts the service (watcher, queue, workers), and drops
into the inbox, the way a PACS export would (some written in place, some as ``.part``
files renamed when complete):

- every ultrasound DICOM file of the PyPI package ``pydicom-data`` (real scanners, all the
  encodings a PACS sends) and two files of other modalities, which must be rejected;
- ultrasound-like phantoms that the project generates, with lesions of known shape and
  size, as PNG and as calibrated DICOM (so the lesion size in mm can be checked);
- broken files: empty, truncated, random bytes named .dcm, text named .png;
- where ``../shared/data/busi`` exists, the BUSI test split (real breast ultrasound).

It waits until the queue is drained, prints what happened to every file, and exits 0
when every good file was processed and every bad one rejected with a reason.
"""

from __future__ import annotations

import csv
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from appliance.config import REPO_ROOT, load_config
from appliance.io.sample_data import pydicom_data_files, ultrasound_sample_files
from appliance.logs import setup_logging
from appliance.phantom import PhantomSpec, make_phantom
from appliance.phantom_dicom import write_phantom_dicom, write_phantom_png

MARKER = ".fame-node-demo"
DEFAULT_BUSI = REPO_ROOT.parent / "shared" / "data" / "busi"
OTHER_MODALITY_SAMPLES = ("MR2_UNCR.dcm", "RG1_UNCR.dcm")


@dataclass(frozen=True)
class Dropped:
    name: str
    kind: str  # "dicom", "phantom", "busi", "other-modality", "broken"
    expect: str  # "done" or "rejected"
    truth: str = ""  # label or known lesion size


def _prepare(folder: Path) -> Path:
    if folder.exists():
        if not (folder / MARKER).exists():
            raise SystemExit(
                f"fame-node demo: {folder} exists and is not a demo folder; choose another --dir"
            )
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / MARKER).write_text("created by fame-node demo; safe to delete\n")
    config = folder / "config.toml"
    config.write_text(
        "# Written by `fame-node demo`. A real node's config: packaging/config.toml\n"
        f'[paths]\nroot = "{folder.resolve()}"\n\n'
        "[ingest]\nrescan_interval_s = 2.0\nsettle_s = 0.5\n\n"
        "[processing]\nworkers = 0\n",
        encoding="utf-8",
    )
    return config


def _drop(src_bytes: bytes, inbox: Path, name: str, via_part: bool) -> None:
    dest = inbox / name
    if via_part:
        tmp = dest.with_name(dest.name + ".part")
        tmp.write_bytes(src_bytes)
        os.replace(tmp, dest)
    else:
        dest.write_bytes(src_bytes)


def _phantoms(staging: Path) -> list[tuple[Path, Dropped]]:
    out = []
    specs = [
        ("phantom_ellipse_shadow", PhantomSpec(lesion="ellipse", posterior="shadow", seed=1), 0.1),
        ("phantom_lobulated", PhantomSpec(lesion="lobulated", semi_axes_px=(55, 35), seed=2), 0.1),
        ("phantom_cyst", PhantomSpec(echogenicity=0.0, posterior="enhancement", seed=3), None),
        ("phantom_normal", PhantomSpec(lesion="none", seed=4), None),
    ]
    for name, spec, spacing in specs:
        ph = make_phantom(spec)
        if spacing is not None:
            path = staging / f"{name}.dcm"
            write_phantom_dicom(
                path,
                ph,
                pixel_spacing_mm=spacing,
                patient_id="DEMO-0001",
                patient_name="Demo^Phantom",
                region_offset=(40, 60),
                canvas=(spec.height + 120, spec.width + 80),
            )
            truth = f"{ph.area_px * spacing * spacing:.0f} mm2"
        else:
            path = staging / f"{name}.png"
            write_phantom_png(path, ph)
            truth = f"{ph.area_px} px" if ph.area_px else "no lesion"
        out.append((path, Dropped(path.name, "phantom", "done", truth)))
    return out


def _broken(staging: Path) -> list[tuple[Path, Dropped]]:
    us = ultrasound_sample_files()
    files: dict[str, bytes] = {
        "empty.dcm": b"",
        "random_bytes.dcm": os.urandom(4096),
        "notes.png": b"Patient called, exam rescheduled. Not an image.\n",
    }
    if us:
        data = us[0].read_bytes()
        files["truncated.dcm"] = data[: len(data) // 2]
    out = []
    for name, data in files.items():
        p = staging / name
        p.write_bytes(data)
        out.append((p, Dropped(name, "broken", "rejected")))
    return out


def _busi(busi: Path) -> list[tuple[Path, Dropped]]:
    manifest = busi / "manifest.csv"
    if not manifest.is_file():
        return []
    with manifest.open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    return [
        (busi / r["image"], Dropped("busi_" + Path(r["image"]).name, "busi", "done", r["label"]))
        for r in rows
    ]


def run_demo(folder: Path, *, busi: Path | None = None, timeout_s: float = 900.0) -> int:
    from appliance.service import Node

    config_path = _prepare(folder)
    config = load_config(config_path, env={})
    # The summary table says what happened to each file; the details go to the log file.
    setup_logging("INFO", config.folder("work") / "logs", console=False)
    warnings.filterwarnings("ignore", module="pydicom")  # e.g. on the truncated file
    staging = folder / "staging"
    staging.mkdir()
    plan: list[tuple[Path, Dropped]] = []
    samples = ultrasound_sample_files()
    if samples:
        plan += [(p, Dropped(p.name, "dicom", "done")) for p in samples]
        by_name = {p.name: p for p in pydicom_data_files()}
        plan += [
            (by_name[n], Dropped(n, "other-modality", "rejected"))
            for n in OTHER_MODALITY_SAMPLES
            if n in by_name
        ]
    else:
        print(
            "note: pydicom-data is not installed: no real DICOM files in this demo "
            "(pip install 'fame-node[demo]')"
        )
    plan += _phantoms(staging)
    plan += _broken(staging)
    busi_dir = busi or DEFAULT_BUSI
    busi_plan = _busi(busi_dir)
    if not busi_plan:
        print(f"note: {busi_dir} not found: the demo runs without the BUSI images")
    plan += busi_plan

    node = Node(config)
    print(
        f"FAME Node demo in {folder}: model {node.parts.bundle.version_label} on "
        f"{node.parts.backend.name}/{node.parts.backend.device}; dropping {len(plan)} files "
        f"into {config.folder('inbox')}"
    )
    started = time.perf_counter()
    node.start()
    try:
        inbox = config.folder("inbox")
        for i, (src, d) in enumerate(plan):
            _drop(src.read_bytes(), inbox, d.name, via_part=i % 3 == 0)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            counts = node.parts.queue.counts()
            if sum(counts.values()) >= len(plan) and node.idle():
                break
            time.sleep(0.5)
        else:
            print(f"demo: gave up after {timeout_s:.0f}s; queue: {node.parts.queue.counts()}")
    finally:
        node.stop()
    elapsed = time.perf_counter() - started
    from appliance.demo_report import report

    return report(node, plan, elapsed)
