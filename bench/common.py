"""What every benchmark shares: the machine, the models' weights, input images, timing.

Timing is paired and interleaved: each repeat runs every contender once, in an order that
rotates from repeat to repeat, so a burst of load from other processes on a shared machine
hits all of them alike; ratios are taken per repeat and their median reported, with the
spread (min..max) as the measure of noise.
"""

from __future__ import annotations

import csv
import os
import platform
import sqlite3
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
BUSI_DIR = REPO_ROOT.parent / "shared" / "data" / "busi"
DEFAULT_BUNDLE = REPO_ROOT / "models" / "default"
RESULTS_DIR = REPO_ROOT / ".cache" / "bench"


def machine() -> dict[str, Any]:
    """CPU model, cores, library versions: the settings every figure depends on."""
    import onnxruntime as ort
    import torch

    cpu, family, model, flags = "unknown", "?", "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name":
                cpu = value
            elif key == "cpu family":
                family = value
            elif key == "model":
                model = value
            elif key == "flags":
                flags = set(value.split())
            if key == "" and cpu != "unknown":
                break  # the first processor's block is enough
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        # "AMD EPYC" names several generations whose speed differs by 2x or more here:
        # the family / model and the vector units say which one a figure was measured on.
        "cpu_family_model": f"{family}/{model}",
        "simd": [
            f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile") if f in flags
        ],
        "cores": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "onnxruntime": ort.__version__,
        "ort_providers": ort.get_available_providers(),
        "cuda": torch.cuda.is_available(),
        "loadavg_at_start": os.getloadavg(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import importlib

        info["tensorrt"] = importlib.import_module("tensorrt").__version__
    except Exception:
        info["tensorrt"] = None
    return info


def load_eager(bundle_dir: Path = DEFAULT_BUNDLE) -> tuple[Any, str]:
    """The torch module of the graph the node runs (eval) and where its weights came from.

    The shipped bundle's own graph (`trainer.graph.load_bundle_graph`: its verified weights,
    out-of-distribution head and temperature; outputs lesion_prob, class_prob, ood_score),
    so the eager contenders compute exactly what the node's ``model.onnx`` computes. Without
    that bundle (or one without heads), random weights of the default architecture and no
    OOD head: the report says so, and the timings are then not the shipped graph's.
    """
    import torch

    from appliance.bundle import BundleError, load_bundle
    from trainer.graph import load_bundle_graph
    from trainer.models import FameNodeNet, LesionClassifier, MAUNet
    from trainer.train import TrainConfig

    try:
        bundle = load_bundle(bundle_dir)
        graph = load_bundle_graph(bundle)
    except (BundleError, OSError) as exc:
        reason = f"{bundle_dir}: {exc}"
    else:
        return (
            graph.eval(),
            f"the shipped bundle {bundle.version_label} (verified weights and heads)",
        )
    torch.manual_seed(0)
    cfg = TrainConfig(manifest=Path(), out=Path())
    net = FameNodeNet(
        MAUNet(base_width=cfg.base_width),
        LesionClassifier(in_channels=2, widths=cfg.cls_widths, dropout=cfg.dropout),
    )
    return net.eval(), f"random weights of the default architecture, no OOD head ({reason})"


def networks(model: Any) -> Any:
    """The `FameNodeNet` (segmenter + classifier) inside what `load_eager` returned."""
    return getattr(model, "net", model)


def busi_test_images(limit: int | None = None) -> list[Path]:
    """The BUSI test split's images (read in place, never copied into the repo)."""
    manifest = BUSI_DIR / "manifest.csv"
    if not manifest.is_file():
        return []
    with manifest.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    paths = [BUSI_DIR / r["image"] for r in rows]
    return paths[:limit] if limit else paths


def phantom_pngs(folder: Path, n: int) -> list[Path]:
    """`n` phantom PNGs written to `folder` (when BUSI is not here)."""
    import cv2

    from appliance.phantom import PhantomSpec, make_phantom

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = make_phantom(PhantomSpec(seed=i, lesion="ellipse" if i % 3 else "lobulated"))
        path = folder / f"phantom_{i:03d}.png"
        cv2.imwrite(str(path), p.image)
        out.append(path)
    return out


def input_images(scratch: Path, n: int) -> tuple[list[Path], str]:
    paths = busi_test_images(n)
    if paths:
        return paths, f"BUSI test split ({len(paths)} images, read from {BUSI_DIR})"
    return phantom_pngs(scratch, n), f"{n} ultrasound phantoms (BUSI not found)"


def preprocessed_batch(paths: Sequence[Path], size: int = 128) -> np.ndarray:
    """(N, 1, size, size) float32 frames as the node prepares them."""
    from appliance.io.reader import read_file
    from appliance.preprocess import PreprocessParams, preprocess

    params = PreprocessParams(size=size)
    frames = [preprocess(read_file(p).frames[0], params)[0] for p in paths]
    return np.stack(frames)[:, None].astype(np.float32)


@dataclass
class Timings:
    """Seconds per call of each contender, one value per repeat."""

    seconds: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def ratios(self, slow: str, fast: str) -> list[float]:
        return [a / b for a, b in zip(self.seconds[slow], self.seconds[fast], strict=True)]

    def ratio(self, slow: str, fast: str) -> dict[str, float]:
        r = self.ratios(slow, fast)
        return {"median": statistics.median(r), "min": min(r), "max": max(r)}


def interleaved(
    contenders: dict[str, Callable[[], object]],
    *,
    repeats: int,
    calls: int,
    warmup: int = 2,
) -> Timings:
    """Time each contender `calls` times per repeat, contenders alternating, order rotating."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    names = list(contenders)
    out = Timings({n: [] for n in names})
    for rep in range(repeats):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            fn = contenders[name]
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            out.seconds[name].append((time.perf_counter() - start) / calls)
    return out


def read_jobs(db: Path) -> list[dict[str, Any]]:
    """Every row of a node store's ``jobs`` table (read-only; [] before the store exists
    or while its schema is being created)."""
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM jobs ORDER BY id")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()
