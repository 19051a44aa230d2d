"""Per-model latency and throughput: torch eager vs ONNX Runtime, at batch 1 and 8.

    python -m bench.models [--repeats 7] [--out .cache/bench/models.json]

Model families: the segmentation ensemble (today one MAU-Net), the classification
ensemble (today one classifier, on [image, lesion map]) and the full graph the node runs
(both, as in ``model.onnx``). Each is exported to ONNX here (parity-checked) and to FP16.

On the CPU: torch eager FP32 vs ONNX Runtime CPU FP32 vs ONNX Runtime CPU with the FP16
graph. On a CUDA machine, in addition: torch eager FP32 vs torch FP16 (eager and
``torch.compile``d), ONNX Runtime CUDA and TensorRT where installed, with the achieved
FLOP/s and its fraction of the GPU's peak. Every comparison is measured in one run,
interleaved (`bench.common.interleaved`), on real preprocessed frames.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    RESULTS_DIR,
    Timings,
    input_images,
    interleaved,
    load_eager,
    machine,
    networks,
)

BATCHES = (1, 8)
# Dense FP16 tensor-core peak, TFLOP/s (vendor data sheets), by a substring of the name.
PEAK_FP16_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 PCIe": 756.0,
    "H100": 756.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
    "T4": 65.0,
}


def peak_tflops(gpu_name: str) -> float | None:
    for key, value in PEAK_FP16_TFLOPS.items():
        if key in gpu_name:
            return value
    return None


def families(model: Any) -> dict[str, dict[str, Any]]:
    """name -> eager module, input channels, ONNX input / output names (`model`: what
    `bench.common.load_eager` returned; ``full`` is the whole of it, OOD head included)."""
    net = networks(model)
    return {
        "segmentation": {
            "module": net.segmenter,
            "channels": 1,
            "input": "image",
            "outputs": ("lesion_logits",),
        },
        "classification": {
            "module": net.classifier,
            "channels": 2,
            "input": "image_and_lesion",
            "outputs": ("class_logits",),
        },
        "full": {
            "module": model,
            "channels": 1,
            "input": "image",
            "outputs": tuple(getattr(model, "output_names", ("lesion_prob", "class_prob"))),
        },
    }


def family_inputs(net: Any, frames: np.ndarray) -> dict[str, np.ndarray]:
    """Real inputs for each family: frames, or frames + the segmenter's lesion map."""
    import torch

    with torch.inference_mode():
        lesion = torch.sigmoid(networks(net).segmenter(torch.from_numpy(frames))).numpy()
    return {
        "segmentation": frames,
        "classification": np.concatenate([frames, lesion], axis=1).astype(np.float32),
        "full": frames,
    }


def ort_session(path: Path, providers: list[str], threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=providers)


def cpu_contenders(
    module: Any, onnx_path: Path, fp16_path: Path, x: np.ndarray, threads: int
) -> dict[str, Callable[[], object]]:
    import torch

    xt = torch.from_numpy(x)
    fp32 = ort_session(onnx_path, ["CPUExecutionProvider"], threads)
    half = ort_session(fp16_path, ["CPUExecutionProvider"], threads)
    name = fp32.get_inputs()[0].name

    def eager() -> object:
        with torch.inference_mode():
            return module(xt)

    return {
        "torch_eager_fp32": eager,
        "ort_cpu_fp32": lambda: fp32.run(None, {name: x}),
        "ort_cpu_fp16": lambda: half.run(None, {name: x}),
    }


def gpu_contenders(
    module: Any, onnx_path: Path, fp16_path: Path, x: np.ndarray
) -> dict[str, Callable[[], object]]:
    """CUDA contenders; each includes the host->device copy and the result's copy back."""
    import copy

    import onnxruntime as ort
    import torch

    eager32 = copy.deepcopy(module).cuda().eval()
    eager16 = copy.deepcopy(module).cuda().eval()
    if hasattr(eager16, "ood_head"):  # the node's torch backend keeps that head in float32
        from appliance.runtime.torch_backend import in_precision

        eager16 = in_precision(eager16, torch.float16)
    else:
        eager16 = eager16.half()
    eager16 = eager16.to(memory_format=torch.channels_last)
    compiled16 = torch.compile(eager16, dynamic=False)
    xt = torch.from_numpy(x)

    def torch_run(model: Any, dtype: Any, channels_last: bool) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode():
                xd = xt.to("cuda", dtype=dtype)
                if channels_last:
                    xd = xd.contiguous(memory_format=torch.channels_last)
                out = model(xd)
                outs = out if isinstance(out, tuple) else (out,)
                return [o.float().cpu() for o in outs]

        return run

    runs: dict[str, Callable[[], object]] = {
        "torch_eager_fp32": torch_run(eager32, torch.float32, False),
        "torch_eager_fp16": torch_run(eager16, torch.float16, True),
        "torch_compiled_fp16": torch_run(compiled16, torch.float16, True),
    }
    if "CUDAExecutionProvider" in ort.get_available_providers():
        for label, path in (("ort_cuda_fp32", onnx_path), ("ort_cuda_fp16", fp16_path)):
            s = ort_session(path, ["CUDAExecutionProvider"], 1)
            if s.get_providers()[0] == "CUDAExecutionProvider":
                name = s.get_inputs()[0].name
                runs[label] = _ort_runner(s, name, x)
    trt = tensorrt_contender(onnx_path, fp16_path, x)
    if trt is not None:
        runs["tensorrt_fp16"] = trt
    return runs


def _ort_runner(session: Any, name: str, x: np.ndarray) -> Callable[[], object]:
    return lambda: session.run(None, {name: x})


def tensorrt_contender(
    onnx_path: Path, fp16_path: Path, x: np.ndarray
) -> Callable[[], object] | None:
    """A TensorRT FP16 engine for this ONNX (built now), or None without TensorRT."""
    from exporters.tensorrt import (
        BuildSettings,
        EngineBuildError,
        build_engine,
        file_sha256,
        machine_key,
        onnx_for_precision,
    )

    try:
        key = machine_key(file_sha256(onnx_path), "fp16", 8)
    except EngineBuildError:
        return None
    import onnx

    model = onnx.load(str(onnx_path))
    name = model.graph.input[0].name
    engine = onnx_path.with_suffix(".plan")
    build_engine(
        onnx_for_precision(onnx_path, fp16_path, key),
        engine,
        key,
        BuildSettings(name, tuple(x.shape[1:]), 8),
    )
    return _raw_trt_runner(engine, name, [o.name for o in model.graph.output], x)


def _raw_trt_runner(
    engine_path: Path, input_name: str, outputs: list[str], x: np.ndarray
) -> Callable[[], object]:
    import importlib

    import torch

    trt = importlib.import_module("tensorrt")
    engine = trt.Runtime(trt.Logger(trt.Logger.ERROR)).deserialize_cuda_engine(
        engine_path.read_bytes()
    )
    context = engine.create_execution_context()
    stream = torch.cuda.Stream()
    xt = torch.from_numpy(x)

    def run() -> object:
        xd = xt.to("cuda")
        context.set_input_shape(input_name, tuple(xd.shape))
        context.set_tensor_address(input_name, xd.data_ptr())
        bufs = []
        for out in outputs:
            buf = torch.empty(tuple(context.get_tensor_shape(out)), device="cuda")
            context.set_tensor_address(out, buf.data_ptr())
            bufs.append(buf)
        context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        return [b.cpu() for b in bufs]

    return run


def model_flops(module: Any, x: np.ndarray) -> int:
    """Multiply-add FLOPs (x2) of one forward pass (convolutions and matmuls)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        module(torch.from_numpy(x))
    return int(counter.get_total_flops())


def summarise(t: Timings, batch: int, baseline: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in t.seconds:
        sec = t.median(name)
        out[name] = {
            "ms_per_call": round(sec * 1e3, 2),
            "ms_per_image": round(sec * 1e3 / batch, 2),
            "images_per_s": round(batch / sec, 1),
            "runs_ms": [round(s * 1e3, 1) for s in t.seconds[name]],
        }
        if name != baseline:
            r = t.ratio(baseline, name)
            out[name]["speedup_vs_" + baseline] = {k: round(v, 2) for k, v in r.items()}
    return out


def run(repeats: int, out: Path, quick: bool = False) -> dict[str, Any]:
    import torch

    from exporters.fp16 import export_fp16
    from exporters.onnx_export import export_onnx

    threads = max(1, torch.get_num_threads())
    net, weights = load_eager()
    with tempfile.TemporaryDirectory(prefix="fame-bench-") as tmp:
        scratch = Path(tmp)
        paths, source = input_images(scratch / "phantoms", max(BATCHES))
        from bench.common import preprocessed_batch

        frames = preprocessed_batch(paths)
        inputs = family_inputs(net, frames)
        result: dict[str, Any] = {
            "machine": machine(),
            "weights": weights,
            "inputs": source,
            "settings": {
                "repeats": repeats,
                "threads": threads,
                "ort_graph_optimization": "ORT_ENABLE_ALL",
                "timing": "median over repeats; contenders interleaved, order rotating; "
                "speedups are the median (min..max) of per-repeat ratios",
            },
            "families": {},
        }
        for fam, spec in families(net).items():
            module = spec["module"].eval()
            onnx_path = scratch / f"{fam}.onnx"
            report = export_onnx(
                module,
                onnx_path,
                frames.shape[-1],
                in_channels=spec["channels"],
                input_name=spec["input"],
                output_names=spec["outputs"],
                real_inputs=torch.from_numpy(inputs[fam]),
            )
            fp16 = export_fp16(onnx_path, scratch / f"{fam}.fp16.onnx", inputs=[inputs[fam][:3]])
            fam_out: dict[str, Any] = {
                "onnx_parity_max_abs_diff": report.max_abs_diff,
                "fp16_max_abs_diff": fp16.max_abs_diff,
                "gflops_per_image": round(model_flops(module, inputs[fam][:1]) / 1e9, 3),
            }
            for batch in BATCHES:
                x = np.ascontiguousarray(inputs[fam][:batch])
                calls = 1 if quick else (6 if batch == 1 else 2)
                cpu = interleaved(
                    cpu_contenders(module, onnx_path, fp16.path, x, threads),
                    repeats=repeats,
                    calls=calls,
                    warmup=1 if quick else 2,
                )
                fam_out[f"cpu_batch{batch}"] = summarise(cpu, batch, "torch_eager_fp32")
                print(f"{fam} batch {batch} CPU: {_line(fam_out[f'cpu_batch{batch}'])}", flush=True)
                if torch.cuda.is_available():
                    gpu = interleaved(
                        gpu_contenders(module, onnx_path, fp16.path, x),
                        repeats=repeats,
                        calls=20,
                        warmup=5,
                    )
                    summary = summarise(gpu, batch, "torch_eager_fp32")
                    _add_flops(summary, fam_out["gflops_per_image"] * batch)
                    fam_out[f"gpu_batch{batch}"] = summary
                    print(f"{fam} batch {batch} GPU: {_line(summary)}", flush=True)
            result["families"][fam] = fam_out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    _append_history(out.with_name("models_history.jsonl"), result)
    return result


def _append_history(path: Path, result: dict[str, Any]) -> None:
    """One line per run: the ORT-vs-eager ratios, to show how much they move between runs."""
    import os
    from datetime import UTC, datetime

    record = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "loadavg_at_start": result["machine"]["loadavg_at_start"],
        "loadavg_at_end": os.getloadavg(),
        "repeats": result["settings"]["repeats"],
        "ort_cpu_fp32_speedup": {
            f"{fam}_b{b}": f[f"cpu_batch{b}"]["ort_cpu_fp32"]["speedup_vs_torch_eager_fp32"][
                "median"
            ]
            for fam, f in result["families"].items()
            for b in BATCHES
        },
    }
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def _add_flops(summary: dict[str, Any], gflops_per_call: float) -> None:
    import torch

    peak = peak_tflops(torch.cuda.get_device_name(0))
    for entry in summary.values():
        tflops = gflops_per_call / entry["ms_per_call"]  # GFLOP / ms = TFLOP/s
        entry["achieved_tflops"] = round(tflops, 3)
        entry["fraction_of_fp16_peak"] = round(tflops / peak, 5) if peak else None


def _line(summary: dict[str, Any]) -> str:
    parts = []
    for name, e in summary.items():
        s = f"{name} {e['ms_per_image']} ms/img"
        if "speedup_vs_torch_eager_fp32" in e:
            s += f" (x{e['speedup_vs_torch_eager_fp32']['median']})"
        parts.append(s)
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="one call per repeat (smoke test)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "models.json")
    args = p.parse_args(argv)
    run(args.repeats, args.out, quick=args.quick)
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
