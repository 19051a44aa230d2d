"""End-to-end node throughput vs a naive torch loop.

    python -m bench.node [--images 78] [--repeats 3] [--out .cache/bench/node.json]

**Node**: a real ``fame-node run`` process (default config: one worker per CPU, the
backend it picks; on the CPU each worker runs its own frames) on a fresh node folder; once
it is up, N files are copied into its inbox and the clock runs until every job is committed
to the database. Throughput is N / (last ``finished_at`` - first drop); per-file latency is
``jobs.created_at`` -> ``finished_at``. The same with the CPU backend micro-batched
(``runtime.micro_batch_on_cpu``, one multi-threaded session call per merged batch) shows
what that policy would give.

**Naive loop**: what a research script does: load the torch models once, then for each
file read it, preprocess it (the node's own function), run the eager model on it alone and
threshold / measure the lesion and diagnose. It writes no files and no database rows, so
it is favoured, if anything.

The contenders alternate within each repeat (node, naive, node micro-batched, ...), so
that load from other processes on a shared machine hits them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import REPO_ROOT, RESULTS_DIR, input_images, load_eager, machine, read_jobs


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run_node(
    files: list[Path], env_extra: dict[str, str], timeout_s: float = 600
) -> dict[str, Any]:
    """Drop `files` into a fresh node's inbox; time until all are committed."""
    root = Path(tempfile.mkdtemp(prefix="fame-bench-node-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAME_NODE_")}
    env.update(
        {
            "FAME_NODE_PATHS__ROOT": str(root),
            "FAME_NODE_INGEST__SETTLE_S": "0.2",
            "FAME_NODE_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
            **env_extra,
        }
    )
    log = (root / "node.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance.cli", "run"],
        env=env,
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        status = root / "work" / "service-status.json"
        deadline = time.monotonic() + 120
        while not status.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (root / "node.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the node did not start:\n{tail}")
            time.sleep(0.1)
        info = json.loads(status.read_text())
        inbox = root / "inbox"
        db = root / "fame-node.sqlite3"
        t0 = datetime.now(UTC)
        start = time.monotonic()
        for i, src in enumerate(files):
            tmp = inbox / f".{i:04d}.tmp"
            shutil.copyfile(src, tmp)
            tmp.rename(inbox / f"img_{i:04d}{src.suffix}")
        while True:
            jobs = read_jobs(db)
            terminal = [j for j in jobs if j["status"] not in ("queued", "running")]
            if len(terminal) >= len(files):
                break
            if time.monotonic() - start > timeout_s or proc.poll() is not None:
                tail = (root / "node.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"node: {len(terminal)}/{len(files)} done:\n{tail}")
            time.sleep(0.05)
        done = [j for j in terminal if j["status"] == "done"]
        finished = [datetime.fromisoformat(j["finished_at"]) for j in terminal]
        wall = (max(finished) - t0).total_seconds()
        latency = [
            (
                datetime.fromisoformat(j["finished_at"]) - datetime.fromisoformat(j["created_at"])
            ).total_seconds()
            for j in done
        ]
        return {
            "images": len(files),
            "done": len(done),
            "wall_s": wall,
            "images_per_s": len(files) / wall,
            "latency_p50_s": percentile(latency, 50),
            "latency_p95_s": percentile(latency, 95),
            "backend": info.get("backend"),
            "provider": info.get("provider"),
            "workers": info.get("workers"),
        }
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


class NaiveLoop:
    """Torch models loaded once; every image alone through read, preprocess, eager, findings."""

    def __init__(self) -> None:
        from appliance.bundle import load_bundle
        from bench.common import DEFAULT_BUNDLE

        self.net, self.weights = load_eager()
        manifest = load_bundle(DEFAULT_BUNDLE).manifest
        self.params = manifest.preprocess_params()
        self.threshold = float(manifest.postprocessing.get("mask_threshold", 0.5))
        self.classes = list(manifest.classes)

    def run(self, files: list[Path], out_dir: Path | None = None) -> dict[str, Any]:
        """With `out_dir`, also write each image's mask and overlay PNGs as the node does."""
        import torch

        from appliance.io.reader import read_file
        from appliance.postprocess import analyse_lesions, diagnose
        from appliance.preprocess import preprocess, unletterbox
        from appliance.results.writers import write_frame_files

        latency = []
        start = time.monotonic()
        for path in files:
            t = time.monotonic()
            loaded = read_file(path)
            frame = loaded.frames[0]
            x, geo = preprocess(frame, self.params)
            with torch.inference_mode():
                lesion, cls, *_ = self.net(torch.from_numpy(x[None, None]))
            prob = unletterbox(lesion[0, 0].numpy(), geo)
            findings = analyse_lesions(
                prob,
                threshold=self.threshold,
                min_area_px=20 / geo.scale**2,
                spacing_mm=loaded.meta.pixel_spacing_mm,
            )
            diagnose(
                cls[0].numpy(),
                self.classes,
                low_confidence=0.6,
                lesion_found=findings.n_lesions > 0,
            )
            if out_dir is not None:
                write_frame_files(out_dir / path.stem, 0, frame, findings.mask)
            latency.append(time.monotonic() - t)
        wall = time.monotonic() - start
        return {
            "images": len(files),
            "wall_s": wall,
            "images_per_s": len(files) / wall,
            "latency_p50_s": percentile(latency, 50),
            "latency_p95_s": percentile(latency, 95),
        }


NODE_VARIANTS: dict[str, dict[str, str]] = {
    "node": {},
    "node_micro_batched": {"FAME_NODE_RUNTIME__MICRO_BATCH_ON_CPU": "true"},
}


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """``name:KEY=VALUE,KEY=VALUE`` (keys without the FAME_NODE_ prefix, e.g.
    ``RUNTIME__INTRA_OP_SPINNING=false``) -> (name, environment)."""
    name, _, settings = text.partition(":")
    env = {}
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        env[f"FAME_NODE_{key.strip().upper()}"] = value.strip()
    return name, env


def stage_profile(files: list[Path], out_dir: Path) -> dict[str, float]:
    """Median milliseconds per image of each stage of the node's pipeline, in this process
    (one thread, the node's own functions and its ONNX Runtime backend at batch 1 on one
    thread: the CPU time each stage costs a worker)."""
    from appliance.bundle import load_bundle
    from appliance.config import RuntimeConfig
    from appliance.io.reader import read_file
    from appliance.postprocess import analyse_lesions
    from appliance.preprocess import preprocess, unletterbox
    from appliance.results.writers import write_frame_files
    from appliance.runtime import create_backend
    from bench.common import DEFAULT_BUNDLE

    bundle = load_bundle(DEFAULT_BUNDLE)
    params = bundle.manifest.preprocess_params()
    backend = create_backend(bundle, RuntimeConfig(intra_op_threads=1), workers=1)
    stages: dict[str, list[float]] = {
        k: [] for k in ("read", "preprocess", "inference", "postprocess", "write_pngs")
    }
    for path in files:
        t0 = time.perf_counter()
        loaded = read_file(path)
        t1 = time.perf_counter()
        x, geo = preprocess(loaded.frames[0], params)
        t2 = time.perf_counter()
        outputs = backend.infer(x[None, None])
        t3 = time.perf_counter()
        prob = unletterbox(outputs.lesion_prob[0], geo)
        findings = analyse_lesions(prob, threshold=0.3, min_area_px=20, spacing_mm=None)
        t4 = time.perf_counter()
        write_frame_files(out_dir, 0, loaded.frames[0], findings.mask)
        t5 = time.perf_counter()
        for key, a, b in zip(stages, (t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5), strict=True):
            stages[key].append((b - a) * 1e3)
    return {k: round(statistics.median(v), 2) for k, v in stages.items()}


def run(
    n_images: int,
    repeats: int,
    out: Path,
    variants: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    variants = variants if variants is not None else NODE_VARIANTS
    with tempfile.TemporaryDirectory(prefix="fame-bench-") as tmp:
        files, source = input_images(Path(tmp) / "phantoms", n_images)
        naive = NaiveLoop()
        written = Path(tmp) / "naive-out"
        contenders: dict[str, Any] = {
            "naive_torch_loop": lambda: naive.run(files),
            "naive_torch_loop_writing_pngs": lambda: naive.run(files, written),
        }
        for name, env in variants.items():
            contenders[name] = lambda env=env: run_node(files, env)
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in contenders}
        naive.run(files[:3])  # warm-up (first-call allocations)
        for rep in range(repeats):
            names = list(contenders)
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                r = contenders[name]()
                runs[name].append(r)
                print(
                    f"repeat {rep + 1}/{repeats} {name}: {r['images_per_s']:.2f} img/s, "
                    f"p50 {r['latency_p50_s'] * 1e3:.0f} ms, p95 {r['latency_p95_s'] * 1e3:.0f} ms",
                    flush=True,
                )
        result: dict[str, Any] = {
            "machine": machine(),
            "inputs": source,
            "naive_weights": naive.weights,
            "settings": {
                "repeats": repeats,
                "node": "fame-node run, default config (processing.workers 0 = one per CPU, "
                "runtime auto), ingest.settle_s 0.2; files copied into the inbox by rename",
                "naive": "one process, torch eager FP32 at batch 1, "
                f"{__import__('torch').get_num_threads()} torch threads; no files written "
                "(naive_torch_loop_writing_pngs: the same, plus each image's mask and overlay "
                "PNGs written with the node's own writer)",
            },
            "runs": runs,
            "summary": {},
        }
        for name, rs in runs.items():
            result["summary"][name] = {
                key: statistics.median(r[key] for r in rs)
                for key in ("images_per_s", "wall_s", "latency_p50_s", "latency_p95_s")
            }
            if "backend" in rs[0]:
                result["summary"][name]["backend"] = f"{rs[0]['backend']} on {rs[0]['provider']}"
        result["settings"]["node_variants"] = variants
        result["node_stages_ms_per_image"] = stage_profile(files, Path(tmp) / "stages")
        for name in variants:
            for base in ("naive_torch_loop", "naive_torch_loop_writing_pngs"):
                ratios = [
                    a["images_per_s"] / b["images_per_s"]
                    for a, b in zip(runs[name], runs[base], strict=True)
                ]
                result["summary"][name][f"throughput_vs_{base}"] = {
                    "median": statistics.median(ratios),
                    "min": min(ratios),
                    "max": max(ratios),
                }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, default=78, help="files dropped (BUSI test has 78)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "node.json")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        help="extra node configuration, NAME:SECTION__KEY=VALUE,... (repeatable)",
    )
    args = p.parse_args(argv)
    variants = dict(NODE_VARIANTS)
    variants.update(parse_variant(v) for v in args.variant)
    result = run(args.images, args.repeats, args.out, variants)
    for name, s in result["summary"].items():
        print(name, json.dumps(s))
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
