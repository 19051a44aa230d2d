"""``fame-node export``: optimised variants of a bundle, TensorRT engines, a Triton repository.

``export onnx --bundle DIR [--checkpoint CKPT] [--out NEW]``
    Adds the FP16 ONNX (``model.fp16.onnx``: FP16 inside, FP32 inputs and outputs, checked
    against ``model.onnx`` through ONNX Runtime) to the bundle. With ``--checkpoint`` (a
    ``trainer.train`` checkpoint) it also re-exports the eager model to ONNX with a dynamic
    batch axis, checks it with ``onnx.checker`` and against the eager model, checks that it
    computes the bundle's ``model.onnx``, and adds the torch weights (``model.pt``) the
    torch-CUDA backend needs. The bundle's ``model.onnx`` itself is never replaced: a new
    model is a new bundle (``python -m trainer.train``). The bundle is changed in place, or
    copied to ``--out`` first; a signed bundle must be copied (then signed again).

``export engines --bundle DIR [--precision fp16|fp32|both] [--max-batch N] [--into-bundle]``
    Builds the TensorRT engines for this machine's GPU and TensorRT into the engine cache
    (``runtime.engine_cache_dir``, each with the record the node trusts it by), where the
    node finds them, and with ``--into-bundle`` also into the bundle's ``engines/`` (for
    sites with the same GPU and TensorRT). Only verified bytes go into the bundle: a cache
    entry whose record does not match is rebuilt, never copied (`exporters.engines`).
    Exits 1 with the reason where that cannot be done (no GPU, no TensorRT).

``export triton --bundle DIR --out REPO [--prefix NAME] [--max-batch N]``
    Writes a Triton Inference Server model repository (`exporters.triton`), with the
    TensorRT plans found for this model in the bundle and the engine cache.

Exit codes: 0 done; 1 refused or failed (the message says why and what to do).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from appliance.bundle import load_bundle
from appliance.config import NodeConfig
from appliance.errors import FameNodeError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export", help="FP16 ONNX and torch weights, TensorRT engines, a Triton repository"
    )
    sub = p.add_subparsers(dest="export_action", required=True, metavar="ACTION")

    ox = sub.add_parser("onnx", help="add the FP16 ONNX (and, from a checkpoint, torch weights)")
    ox.add_argument("--bundle", type=Path, required=True)
    ox.add_argument("--checkpoint", type=Path, help="trainer checkpoint: re-export, add model.pt")
    ox.add_argument("--out", type=Path, help="write a copy here instead of changing the bundle")
    ox.add_argument(
        "--keep-fp32", nargs="*", default=[], metavar="OP", help="op types kept in FP32"
    )
    ox.add_argument("--no-fp16", action="store_true", help="do not write the FP16 variant")
    ox.set_defaults(handler=_onnx)

    en = sub.add_parser("engines", help="build TensorRT engines for this machine's GPU")
    en.add_argument("--bundle", type=Path, required=True)
    en.add_argument("--precision", choices=["fp16", "fp32", "both"], default=None)
    en.add_argument("--max-batch", type=int, default=None, help="optimisation profile 1..N")
    en.add_argument("--into-bundle", action="store_true", help="also add them to the bundle")
    en.set_defaults(handler=_engines)

    tr = sub.add_parser("triton", help="write a Triton Inference Server model repository")
    tr.add_argument("--bundle", type=Path, required=True)
    tr.add_argument("--out", type=Path, required=True, help="the repository folder to write")
    tr.add_argument("--prefix", default="fame_node", help="model name prefix (default fame_node)")
    tr.add_argument("--max-batch", type=int, default=8)
    tr.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    tr.set_defaults(handler=_triton)


def _fail(message: str) -> int:
    print(f"fame-node export: {message}", file=sys.stderr)
    return 1


def _onnx(config: NodeConfig, args: argparse.Namespace) -> int:
    from exporters.fp16 import Fp16Error
    from exporters.variants import add_fp16, copy_bundle

    try:
        target = copy_bundle(args.bundle, args.out) if args.out else args.bundle
        load_bundle(target)
        if args.checkpoint is not None:
            from exporters.onnx_export import ExportError

            try:
                diff = _add_checkpoint(target, args.checkpoint)
            except ExportError as exc:
                return _fail(str(exc))
            print(f"torch weights: {target / 'model.pt'} (matches model.onnx to {diff:.1e})")
        if not args.no_fp16:
            report = add_fp16(target, keep_fp32=tuple(args.keep_fp32))
            print(f"fp16: {report}")
    except Fp16Error as exc:
        return _fail(str(exc))
    except FameNodeError as exc:
        return _fail(str(exc))
    print(f"bundle updated and verified: {target}")
    return 0


def _add_checkpoint(bundle_dir: Path, checkpoint: Path) -> float:
    """Re-export the checkpoint (checker + parity vs eager), then add its weights."""
    import tempfile

    from exporters.onnx_export import export_onnx
    from exporters.variants import add_torch_weights, load_trainer_checkpoint

    if not checkpoint.is_file():
        raise FameNodeError(f"checkpoint {checkpoint} does not exist")
    bundle = load_bundle(bundle_dir)
    size = bundle.manifest.preprocess_params().size
    net = load_trainer_checkpoint(checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        report = export_onnx(net, Path(tmp) / "model.onnx", size)
        print(f"onnx re-export: {report}")
    return add_torch_weights(bundle_dir, net)


def _engines(config: NodeConfig, args: argparse.Namespace) -> int:
    from appliance.runtime.engine_cache import EngineCache
    from exporters.engines import engine_for
    from exporters.tensorrt import EngineBuildError, Precision, machine_key
    from exporters.variants import add_engine

    rt = config.runtime
    precisions: list[Precision] = (
        ["fp16", "fp32"] if args.precision == "both" else [args.precision or rt.precision]
    )
    max_batch = args.max_batch or max(rt.batch_size, rt.micro_batch_max)
    try:
        bundle = load_bundle(args.bundle)
        sha = bundle.manifest.files[bundle.manifest.model_file]  # verified just now
        cache = EngineCache(rt.engine_dir())
        for precision in precisions:
            key = machine_key(sha, precision, max_batch)
            engine = engine_for(bundle, key, cache)
            where = {"bundle": "in the bundle", "cache": "in the cache", "built": "built"}
            print(f"{engine.name}: {where[engine.origin]} (verified, {len(engine.data)} bytes)")
            if args.into_bundle and engine.origin != "bundle":
                add_engine(args.bundle, engine.name, engine.data)
                print(f"added to bundle: engines/{engine.name}")
    except EngineBuildError as exc:
        return _fail(f"cannot build TensorRT engines on this machine: {exc}")
    except FameNodeError as exc:
        return _fail(str(exc))
    return 0


def _triton(config: NodeConfig, args: argparse.Namespace) -> int:
    from appliance.runtime.engine_cache import EngineCache
    from exporters.triton import TritonExportError, bundle_engines, write_triton_repository

    try:
        bundle = load_bundle(args.bundle)
        engines = bundle_engines(bundle, [EngineCache(config.runtime.engine_dir())])
        report = write_triton_repository(
            bundle,
            args.out,
            prefix=args.prefix,
            max_batch=args.max_batch,
            engines=engines,
            overwrite=args.overwrite,
        )
    except TritonExportError as exc:
        return _fail(str(exc))
    except FameNodeError as exc:
        return _fail(str(exc))
    print(report)
    if not engines:
        print("no TensorRT plans for this model were found (build them with `export engines`)")
    return 0
