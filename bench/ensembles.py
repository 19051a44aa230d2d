"""Speed of the FAME ensembles against the shipped single model, side by side in one run.

``python -m bench.ensembles [--repeats 5] [--images 40] [--node-repeats 2]``
(writes ``docs/bench/ensembles.json``; `bench.report` puts it into docs/PERFORMANCE.md)

Graphs (128 x 128, MAU-Net base width 16, weights seeded at random: the speed does not
depend on them; the shipped one has its trained weights):

- ``shipped``: the default bundle's graph (one MAU-Net, the pre-activation ResNet);
- ``edge-ensemble``: the FAME ensembles at the ``edge`` profile, the three-fold MAU-Net
  ensemble (`trainer.models.fold_ensemble`) and the dual-stage classifier
  (`trainer.models.dual_stage`) with the OOD head and the uncertainty output, i.e. the
  graph an edge ensemble bundle ships;
- ``paper-classifier``: one MAU-Net with the dual-stage classifier at the ``paper``
  profile (ResNet50V2, NASNet-A Large, MAU-Net encoder); timed at batch 1 only.

1. **Graph**: torch eager FP32 against ONNX Runtime CPU FP32, batch 1, every contender of
   every graph interleaved in rotating order (`bench.common.interleaved`).
2. **End to end**: a real ``fame-node run`` with the shipped bundle against one with an
   edge-ensemble bundle (written by the project's own export, `exporters.fame_bundle`, with
   its OOD head and temperature fitted on synthetic arrays), the same files dropped into
   each inbox, alternating (`bench.node.run_node`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import REPO_ROOT, input_images, interleaved, machine

OUT = REPO_ROOT / "docs" / "bench" / "ensembles.json"
SIZE = 128


def edge_ensemble() -> Any:
    """The edge ensemble (3 MAU-Nets averaged, the edge dual-stage classifier), seeded."""
    import torch

    from trainer.models import FameNodeNet, MAUNet
    from trainer.models.dual_stage import DualStageClassifier
    from trainer.models.fold_ensemble import FoldEnsemble
    from trainer.profiles import profile

    torch.manual_seed(0)
    folds = FoldEnsemble([MAUNet(base_width=16) for _ in range(3)])
    return FameNodeNet(folds, DualStageClassifier(profile("edge"))).eval()


def paper_classifier() -> Any:
    import torch

    from trainer.models import FameNodeNet, MAUNet
    from trainer.models.dual_stage import DualStageClassifier
    from trainer.profiles import profile

    torch.manual_seed(0)
    return FameNodeNet(MAUNet(base_width=16), DualStageClassifier(profile("paper"))).eval()


def synthetic_arrays(n: int, seed: int) -> Any:
    """Preprocessed-looking arrays (z-scored noise with a bright disc), labels cycling."""
    from trainer.data import ArraySet

    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, SIZE, SIZE)).astype(np.float32)
    masks = np.zeros((n, SIZE, SIZE), np.uint8)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for i in range(n):
        cy, cx, r = rng.integers(30, 98), rng.integers(30, 98), rng.integers(8, 24)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        images[i][disc] += 1.5
        masks[i][disc] = 1
    return ArraySet(images, masks, np.arange(n, dtype=np.int64) % 3, tuple(map(str, range(n))))


def write_edge_bundle(net: Any, out: Path, work: Path) -> Path:
    """`net` as a verified bundle, through the project's one export."""
    import torch

    from appliance.preprocess import PreprocessParams
    from exporters.fame_bundle import BundleIdentity, export_fame_bundle

    with torch.no_grad():
        features = int(net.classifier.features(torch.zeros(1, 2, SIZE, SIZE)).shape[1])
    train = synthetic_arrays(max(64, features // 4 + 32), seed=1)
    val = synthetic_arrays(24, seed=2)
    return export_fame_bundle(
        net,
        out,
        identity=BundleIdentity(
            name="bench-edge-ensemble",
            version="0.0.0",
            preprocessing=PreprocessParams(size=SIZE).to_dict(),
            mask_threshold=0.5,
            min_lesion_area_px=20,
        ),
        train=train,
        val=val,
        work_dir=work,
        training={"data": "synthetic arrays: a speed benchmark, random weights"},
        evaluation={},
    )


def graph_contenders(
    graphs: dict[str, tuple[Any, Path]], x: np.ndarray, threads: int
) -> dict[str, Callable[[], object]]:
    import torch

    from bench.models import ort_session

    xt = torch.from_numpy(x)
    out: dict[str, Callable[[], object]] = {}
    for name, (module, onnx_path) in graphs.items():
        session = ort_session(onnx_path, ["CPUExecutionProvider"], threads)
        input_name = session.get_inputs()[0].name

        def eager(module: Any = module) -> object:
            with torch.inference_mode():
                return module(xt)

        def onnxruntime(session: Any = session, input_name: str = input_name) -> object:
            return session.run(None, {input_name: x})

        out[f"{name}/torch_eager_fp32"] = eager
        out[f"{name}/ort_cpu_fp32"] = onnxruntime
    return out


def run(repeats: int, n_images: int, node_repeats: int, out: Path) -> dict[str, Any]:
    import torch

    from appliance.bundle import load_bundle
    from bench.common import DEFAULT_BUNDLE, preprocessed_batch
    from bench.node import run_node
    from exporters.onnx_export import export_onnx
    from trainer.weights import load_bundle_net

    threads = max(1, torch.get_num_threads())
    result: dict[str, Any] = {
        "machine": machine(),
        "settings": {
            "size": SIZE,
            "threads": threads,
            "repeats": repeats,
            "timing": "batch 1; median over repeats of the mean per call; contenders "
            "interleaved, order rotating; the paper graph 1 call per repeat, the others 4",
        },
    }
    with tempfile.TemporaryDirectory(prefix="fame-bench-ens-") as tmp:
        scratch = Path(tmp)
        files, source = input_images(scratch / "phantoms", n_images)
        result["inputs"] = source
        x = np.ascontiguousarray(preprocessed_batch(files[:1]))
        shipped_bundle = load_bundle(DEFAULT_BUNDLE)
        result["shipped_bundle"] = shipped_bundle.version_label
        shipped = load_bundle_net(shipped_bundle).eval()
        edge = edge_ensemble()
        edge_bundle = write_edge_bundle(edge, scratch / "edge-bundle", scratch / "edge-work")
        graphs: dict[str, tuple[Any, Path]] = {
            "shipped": (shipped, DEFAULT_BUNDLE / "model.onnx"),
            "edge-ensemble": (edge, edge_bundle / "model.onnx"),
        }
        paper = paper_classifier()
        paper_onnx = scratch / "paper.onnx"
        export_onnx(paper, paper_onnx, SIZE, real_inputs=torch.from_numpy(x))
        result["parameters"] = {
            "shipped": sum(p.numel() for p in shipped.parameters()),
            "edge-ensemble": sum(p.numel() for p in edge.parameters()),
            "paper-classifier": sum(p.numel() for p in paper.parameters()),
        }
        fast = interleaved(graph_contenders(graphs, x, threads), repeats=repeats, calls=4)
        slow = interleaved(
            graph_contenders({"paper-classifier": (paper, paper_onnx)}, x, threads),
            repeats=max(2, repeats // 2),
            calls=1,
            warmup=1,
        )
        graph: dict[str, Any] = {}
        for timings in (fast, slow):
            for name, seconds in timings.seconds.items():
                graph[name] = {"images_per_s": round(1.0 / statistics.median(seconds), 2)}
        base = fast.seconds["shipped/ort_cpu_fp32"]
        for name in ("edge-ensemble/ort_cpu_fp32", "edge-ensemble/torch_eager_fp32"):
            ratios = [b / s for b, s in zip(base, fast.seconds[name], strict=True)]
            graph[name]["speed_vs_shipped_ort"] = round(statistics.median(ratios), 3)
        result["graph_batch1"] = graph
        runs: dict[str, list[dict[str, Any]]] = {"shipped": [], "edge-ensemble": []}
        envs = {"shipped": {}, "edge-ensemble": {"FAME_NODE_MODELS__BUNDLE": str(edge_bundle)}}
        for rep in range(node_repeats):
            order = list(runs) if rep % 2 == 0 else list(reversed(runs))
            for name in order:
                r = run_node(files, envs[name])
                runs[name].append(r)
                print(f"node {name} repeat {rep + 1}: {r['images_per_s']:.2f} img/s", flush=True)
        result["node_end_to_end"] = {
            name: {
                "images_per_s": round(statistics.median(r["images_per_s"] for r in rs), 2),
                "latency_p95_s": round(statistics.median(r["latency_p95_s"] for r in rs), 3),
                "runs": [round(r["images_per_s"], 2) for r in rs],
                "files": len(files),
            }
            for name, rs in runs.items()
        }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ensembles", description=__doc__)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--images", type=int, default=40, help="files dropped into each node")
    p.add_argument("--node-repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    result = run(a.repeats, a.images, a.node_repeats, a.out)
    print(json.dumps({k: result[k] for k in ("graph_batch1", "node_end_to_end")}, indent=1))
    print(f"results: {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
