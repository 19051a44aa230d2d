"""Write docs/PERFORMANCE.md from the benchmarks' JSON results.

    python -m bench.report [--models .cache/bench/models.json] [--node .cache/bench/node.json]
                           [--gpu-models docs/bench/models_gpu.json]

Every number in the document comes from those files (measured by `bench.models` and
`bench.node` in one run each); this module only formats them and checks them against the
figures the project set itself.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, RESULTS_DIR

FAMILY_LABELS = {
    "segmentation": "segmentation ensemble (today one MAU-Net)",
    "classification": "classification ensemble (today one classifier on [image, lesion map])",
    "full": "full model the node runs (both, one graph: `model.onnx`)",
}
# A GPU machine's `bench.models` results, kept in the repository (a GPU is lent to few
# sessions), so that every later `make bench` on a CPU keeps the GPU section.
GPU_RESULTS = REPO_ROOT / "docs" / "bench" / "models_gpu.json"
ENSEMBLE_RESULTS = REPO_ROOT / "docs" / "bench" / "ensembles.json"  # bench.ensembles
CPU_TARGET = 2.0
NODE_TARGET = 3.0
GPU_TARGET = 3.0


def _r(spread: dict[str, float]) -> str:
    return f"**{spread['median']:.2f}x** ({spread['min']:.2f}–{spread['max']:.2f})"


def _cpu_detail(m: dict[str, Any]) -> str:
    """Family / model and vector units, where the run recorded them (not before 2026-12-02)."""
    if "cpu_family_model" not in m:
        return ""
    return f" (family/model {m['cpu_family_model']}; {', '.join(m.get('simd', [])) or 'no AVX2'})"


def _machine(m: dict[str, Any]) -> list[str]:
    load = ", ".join(f"{x:.2f}" for x in m.get("loadavg_at_start", []))
    lines = [
        f"- CPU: {m['cpu']}{_cpu_detail(m)}, {m['cores']} cores ({m['cpus_usable']} usable), "
        f"shared with other users (load average at start: {load})",
        f"- Python {m['python']}, torch {m['torch']} ({m['torch_threads']} threads), "
        f"ONNX Runtime {m['onnxruntime']} (providers: {', '.join(m['ort_providers'])})",
        f"- CUDA: {'yes, ' + m['gpu'] if m.get('cuda') else 'no GPU on this machine'}; "
        f"TensorRT: {m.get('tensorrt') or 'not installed'}",
    ]
    return lines


def models_section(d: dict[str, Any]) -> list[str]:
    s = d["settings"]
    out = [
        "## Per model: torch eager vs ONNX Runtime (CPU)",
        "",
        f"Command: `python -m bench.models --repeats {s['repeats']}`. Weights: {d['weights']}. "
        f"Inputs: {d['inputs']}, preprocessed as the node does. Each model family is exported "
        "to ONNX with a parity check against the eager model and to the FP16 variant. "
        f"Timing: {s['timing']}; torch and ONNX Runtime both use {s['threads']} threads, "
        "ONNX Runtime with `ORT_ENABLE_ALL`.",
        "",
        "| model | batch | torch eager FP32 ms/image | ORT CPU FP32 ms/image | ORT speedup "
        f"(target ≥ {CPU_TARGET:.0f}x) | ORT CPU FP16 ms/image | FP16 speedup |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    verdicts = []
    for fam, f in d["families"].items():
        for batch in (1, 8):
            c = f.get(f"cpu_batch{batch}")
            if c is None:
                continue
            eager, ort32, ort16 = c["torch_eager_fp32"], c["ort_cpu_fp32"], c["ort_cpu_fp16"]
            sp = ort32["speedup_vs_torch_eager_fp32"]
            out.append(
                f"| {fam} | {batch} | {eager['ms_per_image']} | {ort32['ms_per_image']} | "
                f"{_r(sp)} | {ort16['ms_per_image']} | "
                f"{ort16['speedup_vs_torch_eager_fp32']['median']:.2f}x |"
            )
            verdicts.append((fam, batch, sp["median"]))
    out += [""]
    for fam in d["families"]:
        f = d["families"][fam]
        out.append(
            f"- **{fam}**: {FAMILY_LABELS.get(fam, fam)}; {f['gflops_per_image']} GFLOP per "
            f"image; ONNX parity vs eager max |diff| "
            + ", ".join(f"{k} {v:.1e}" for k, v in f["onnx_parity_max_abs_diff"].items())
            + "; FP16 vs FP32 max |diff| "
            + ", ".join(f"{k} {v:.1e}" for k, v in f["fp16_max_abs_diff"].items())
        )
    out += [
        "- **FP16 on the CPU** is not faster here (the FP16 columns); the FP16 variant is "
        "meant for GPUs (TensorRT 11's strongly typed engines, ONNX Runtime CUDA) and is "
        "checked against FP32 here.",
        "- The node runs MAU-Net and the classifier as one graph in one ONNX Runtime session "
        "(the `full` rows), so the two ensembles cost one session call per batch.",
    ]
    history = d.get("history") or []
    if len(history) > 1:
        keys = list(history[-1]["ort_cpu_fp32_speedup"])
        out += [
            "",
            "Run to run (every `bench.models` run on this machine, oldest first; ORT CPU "
            "FP32 speedup over torch eager, median of each run; the last row is the run above):",
            "",
            "| run (UTC) | load avg at start | " + " | ".join(keys) + " |",
            "| --- | --- | " + " | ".join("---" for _ in keys) + " |",
        ]
        for h in history:
            sp = h["ort_cpu_fp32_speedup"]
            out.append(
                f"| {h['time']} | {h['loadavg_at_start'][0]:.2f} | "
                + " | ".join(f"{sp.get(k, float('nan')):.2f}x" for k in keys)
                + " |"
            )
    met = [v for v in verdicts if v[2] >= CPU_TARGET]
    missed = [v for v in verdicts if v[2] < CPU_TARGET]
    out += [
        "",
        f"**Against the figure (ORT ≥ {CPU_TARGET:.0f}x torch eager per image, each "
        f"ensemble):** met in {len(met)} of {len(verdicts)} cases"
        + (
            "; not met for "
            + ", ".join(f"{fam} at batch {b} ({r:.2f}x)" for fam, b, r in missed)
            + "."
            if missed
            else "."
        ),
        "",
    ]
    return out


def gpu_section(d: dict[str, Any] | None) -> list[str]:
    """The GPU rows of a `bench.models` run (this machine's, or one from a GPU machine)."""
    gpu = [(fam, b, f[f"gpu_batch{b}"]) for fam, f in (d or {}).get("families", {}).items()
           for b in (1, 8) if f"gpu_batch{b}" in f]  # fmt: skip
    out = ["## Per model on a GPU", ""]
    if d is None or not gpu:
        out += [
            f"**Not measured.** The figure (TensorRT, or the best backend available, ≥ "
            f"{GPU_TARGET:.0f}x torch eager FP32 for the full model at batch 8, with the "
            "fraction of the GPU's peak FLOP/s) is open: no GPU machine was at hand for this "
            "task, and none was lent to it; no GPU figure is given here and none may be "
            "inferred from the CPU figures. "
            "On a CUDA machine `make bench` fills this section (or `bench/device.sh` on a "
            "lent GPU machine, see bench/README.md): torch eager FP32 vs torch "
            "FP16 (eager and `torch.compile`d) vs ONNX Runtime CUDA and TensorRT where "
            "installed, with the achieved TFLOP/s and the fraction of the GPU's dense FP16 "
            "peak. The TensorRT and ONNX Runtime CUDA paths are written against their "
            "documented APIs (TensorRT 10 and 11; `execute_async_v3`) and covered by the "
            "`gpu`-marked tests in `tests/appliance/runtime/`, which skip cleanly here.",
            "",
        ]
        return out
    m = d["machine"]
    out += [
        f"Command: `python -m bench.models --repeats {d['settings']['repeats']}` on "
        f"{m.get('gpu')} (host CPU: {m['cpu']}, {m['cpus_usable']} usable; torch "
        f"{m['torch']}, ONNX Runtime {m['onnxruntime']}, TensorRT "
        f"{m.get('tensorrt') or 'not installed'}). Weights: {d['weights']}. Inputs: "
        f"{d['inputs']}. Each call includes the host-to-device copy of the batch and the "
        "copy of the results back; medians over repeats, ratios per repeat (min–max).",
        "",
        "| model | batch | backend | ms/image | speedup vs eager FP32 | TFLOP/s | of FP16 peak |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for fam, b, g in gpu:
        for name, e in g.items():
            sp = e.get("speedup_vs_torch_eager_fp32")
            frac = e.get("fraction_of_fp16_peak")
            out.append(
                f"| {fam} | {b} | {name} | {e['ms_per_image']} | "
                f"{_r(sp) if sp else '1x'} | {e['achieved_tflops']} | "
                f"{f'{frac:.2%}' if frac is not None else 'n/a'} |"
            )
    full8 = next((g for fam, b, g in gpu if fam == "full" and b == 8), None)
    if full8:
        best_name, best = min(
            ((k, v) for k, v in full8.items() if k != "torch_eager_fp32"),
            key=lambda kv: kv[1]["ms_per_image"],
        )
        ratio = best["speedup_vs_torch_eager_fp32"]["median"]
        out += [
            "",
            f"**Against the figure (best backend ≥ {GPU_TARGET:.0f}x torch eager FP32, full "
            f"model, batch 8):** {best_name}, {ratio:.2f}x median: "
            + ("met" if ratio >= GPU_TARGET else "not met")
            + ".",
        ]
    return [*out, ""]


def node_section(d: dict[str, Any]) -> list[str]:
    s = d["summary"]
    st = d["settings"]
    out = [
        "## End to end: the node vs a naive torch loop",
        "",
        f"Command: `python -m bench.node --images {d['runs']['node'][0]['images']} --repeats "
        f"{st['repeats']}`. Inputs: {d['inputs']}. Node: {st['node']}. Naive loop: "
        f"{st['naive']}; weights: {d['naive_weights']}. Node throughput is images / (last "
        "result committed − first file dropped); latency is per file, `jobs.created_at` → "
        "`finished_at` (so it includes queueing behind earlier files). Contenders alternate "
        "within each repeat; medians over repeats, ratios per repeat (min–max).",
        "",
        "| contender | images/s | p50 latency | p95 latency | throughput vs naive loop "
        f"(target ≥ {NODE_TARGET:.0f}x) | vs naive loop writing the same PNGs |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, v in s.items():
        r1 = v.get("throughput_vs_naive_torch_loop")
        r2 = v.get("throughput_vs_naive_torch_loop_writing_pngs")
        backend = f" ({v['backend']})" if "backend" in v else ""
        out.append(
            f"| {name}{backend} | {v['images_per_s']:.2f} | {v['latency_p50_s'] * 1e3:.0f} ms | "
            f"{v['latency_p95_s'] * 1e3:.0f} ms | {_r(r1) if r1 else '–'} | "
            f"{_r(r2) if r2 else '–'} |"
        )
    out += ["", "Every repeat (images/s):", ""]
    for name, runs in d["runs"].items():
        out.append(f"- {name}: " + ", ".join(f"{r['images_per_s']:.2f}" for r in runs))
    stages = d.get("node_stages_ms_per_image")
    if stages:
        total = sum(stages.values())
        out += [
            "",
            "Where a node's time goes per image (one thread, median ms; the node's own "
            "functions and backend): "
            + ", ".join(f"{k} {v:.1f} ({v / total:.0%})" for k, v in stages.items())
            + ".",
        ]
    ratio = s["node"]["throughput_vs_naive_torch_loop"]["median"]
    out += [
        "",
        f"**Against the figure (node ≥ {NODE_TARGET:.0f}x the naive loop):** "
        + ("met" if ratio >= NODE_TARGET else "not met")
        + f" ({ratio:.2f}x median).",
        "",
    ]
    if ratio < NODE_TARGET:
        out += _node_limits(d)
    return out


ENSEMBLE_TARGET = 15.0  # images/s of the edge ensemble through fame-node run (issue 10)


def ensembles_section(d: dict[str, Any]) -> list[str]:
    """`bench.ensembles`: the FAME ensembles against the shipped model, one run."""
    g, n, st = d["graph_batch1"], d["node_end_to_end"], d["settings"]
    out = [
        "## The FAME ensembles: graph and end to end",
        "",
        f"Command: `python -m bench.ensembles` (`docs/bench/ensembles.json`; load average "
        f"at its start {', '.join(f'{v:.1f}' for v in d['machine']['loadavg_at_start'])} "
        f"on {d['machine']['cpus_usable']} cores of an {d['machine']['cpu']}"
        f"{_cpu_detail(d['machine'])}). {st['size']} x {st['size']}, "
        f"{st['threads']} threads, {st['timing']}. Inputs: {d['inputs']}. `edge-ensemble` "
        "is the three-fold MAU-Net ensemble with the `edge` dual-stage classifier, OOD head "
        "and uncertainty output; `paper-classifier` one MAU-Net with the `paper` dual-stage "
        "classifier. Their weights are random (speed does not depend on them); `shipped` is "
        f"the default bundle, {d.get('shipped_bundle', 'not recorded by this run')}.",
        "",
        "| graph | parameters | torch eager FP32 img/s | ONNX Runtime CPU img/s |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name in ("shipped", "edge-ensemble", "paper-classifier"):
        out.append(
            f"| {name} | {d['parameters'][name] / 1e6:.1f} M | "
            f"{g[f'{name}/torch_eager_fp32']['images_per_s']:.2f} | "
            f"{g[f'{name}/ort_cpu_fp32']['images_per_s']:.2f} |"
        )
    ratio = g["edge-ensemble/ort_cpu_fp32"]["speed_vs_shipped_ort"]
    out += [
        "",
        f"The edge ensemble's graph runs at {ratio:.2f}x the shipped graph's speed (median of "
        "per-repeat ratios, ONNX Runtime).",
        "",
        "| `fame-node run` with | images/s (median) | p95 latency | every run |",
        "| --- | ---: | ---: | --- |",
    ]
    for name, v in n.items():
        out.append(
            f"| {name} | {v['images_per_s']:.2f} | {v['latency_p95_s'] * 1e3:.0f} ms | "
            f"{', '.join(f'{r:.2f}' for r in v['runs'])} ({v['files']} files each) |"
        )
    got = n["edge-ensemble"]["images_per_s"]
    out += [
        "",
        f"**Against the figure (edge ensemble through `fame-node run` ≥ {ENSEMBLE_TARGET:.0f} "
        f"images/s):** {'met' if got >= ENSEMBLE_TARGET else 'not met'} ({got:.2f} images/s "
        "on this machine at this load).",
        "",
    ]
    return out


def _node_limits(d: dict[str, Any]) -> list[str]:
    """What keeps the node from the figure, from the same run's numbers."""
    s = d["summary"]
    stages = d.get("node_stages_ms_per_image") or {}
    total = sum(stages.values()) or 1.0
    cpus = int((d.get("machine") or {}).get("cpus_usable") or 1)
    loop = 1e3 / s["naive_torch_loop"]["images_per_s"]
    node_ms = 1e3 / s["node"]["images_per_s"]
    lines = ["What limits it (all from this run):", ""]
    if stages:
        inference = stages.get("inference", 0.0)
        lines.append(
            f"- **The CPU time per image.** One image costs a worker {total:.0f} ms of CPU "
            f"(the stages above, each on one thread); inference alone is {inference:.0f} ms. "
            f"With {cpus} CPU(s) busy the node cannot beat {cpus} x {loop:.0f} ms (the loop's "
            f"time per image) / {total:.0f} ms = {cpus * loop / total:.1f}x the loop; even "
            f"with reading, postprocessing and result files free, inference alone caps it at "
            f"{cpus * loop / max(inference, 1e-9):.1f}x. The node reached "
            f"{s['node']['throughput_vs_naive_torch_loop']['median']:.2f}x: {node_ms:.0f} ms "
            f"per image on {cpus} CPU(s) is {cpus * node_ms:.0f} ms of CPU against the stages' "
            f"{total:.0f} ms; the rest is the database, result.json, hashing, the watcher and "
            "the threads' hand-offs."
        )
        lines.append(
            "- The naive loop writes nothing; against a loop that writes the same PNGs the "
            f"node is {s['node']['throughput_vs_naive_torch_loop_writing_pngs']['median']:.2f}x."
        )
    if "node_micro_batched" in s:
        lines.append(
            "- **Micro-batching on the CPU** (`runtime.micro_batch_on_cpu = true`: workers' "
            "frames merged into one call of a session that uses every CPU) gave "
            f"{s['node_micro_batched']['images_per_s']:.1f} images/s against the default's "
            f"{s['node']['images_per_s']:.1f} (each worker its own frames on its own CPU): a "
            "larger batch saves little per image on a CPU (the `full` rows of the per-model "
            "table) and the multi-threaded session competes with the workers' reading and "
            "writing. On a GPU the node micro-batches (a batch of 8 costs little more than 1)."
        )
    lines.append(
        "- **Latency** p50 / p95 are dominated by queueing: all files are dropped at once, "
        "so the last ones wait for the ones before them (the p50 of one file alone is its "
        "processing time, about the per-image total above)."
    )
    return [*lines, ""]


def write(
    models: dict[str, Any] | None,
    node: dict[str, Any] | None,
    out: Path,
    gpu_models: dict[str, Any] | None = None,
    ensembles: dict[str, Any] | None = None,
) -> Path:
    """`gpu_models`: a `bench.models` run on a GPU machine for the GPU section (default: the
    GPU rows of `models`, if it ran on one)."""
    machine = (models or node or {}).get("machine")
    lines = [
        "# Performance",
        "",
        "Measured by `make bench` (`python -m bench`), which runs `bench/models.py` and "
        "`bench/node.py` and writes this file; the raw results are in `.cache/bench/*.json`. "
        f"Written {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
        "",
        "## Machine and settings",
        "",
        *(_machine(machine) if machine else ["- (no results)"]),
        "- The machine is shared with other engineers' builds and tests: timings move by "
        "2-10x from minute to minute. Every comparison is therefore measured side by side "
        "in one run, interleaved, several repeats; medians are reported with the min–max "
        "of the per-repeat ratios as the measure of noise. torch eager suffers more from "
        "that load than ONNX Runtime (its OpenMP threads wait badly on busy cores), which "
        "widens the ratios under load; the quiet-machine ratios are the lower ones.",
        "",
    ]
    if models:
        lines += models_section(models)
    lines += gpu_section(gpu_models or models)
    if node:
        lines += node_section(node)
    if ensembles:
        lines += ensembles_section(ensembles)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return out


def load_results(path: Path) -> dict[str, Any] | None:
    """A results file, with ``history`` (models_history.jsonl next to it) for models.json."""
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    history = path.with_name("models_history.jsonl")
    if path.name == "models.json" and history.is_file():
        lines = history.read_text(encoding="utf-8").splitlines()
        data["history"] = [json.loads(line) for line in lines if line.strip()]
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", type=Path, default=RESULTS_DIR / "models.json")
    p.add_argument("--node", type=Path, default=RESULTS_DIR / "node.json")
    p.add_argument(
        "--gpu-models",
        type=Path,
        default=GPU_RESULTS,
        help="bench.models results from a GPU machine (bench/device.sh), for the GPU section",
    )
    p.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "PERFORMANCE.md")
    args = p.parse_args(argv)
    models, node = load_results(args.models), load_results(args.node)
    ensembles = load_results(ENSEMBLE_RESULTS)
    written = write(models, node, args.out, load_results(args.gpu_models), ensembles)
    print(f"written: {written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
