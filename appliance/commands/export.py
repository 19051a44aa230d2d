"""``fame-node export``: optimised variants of a bundle, TensorRT engines, a Triton repository.

``export onnx --bundle DIR [--out NEW]``
    Adds the FP16 ONNX (``model.fp16.onnx``: FP16 inside, FP32 inputs and outputs, checked
    against ``model.onnx`` through ONNX Runtime) to the bundle. The bundle's ``model.onnx``
    itself is never replaced: a new model is a new bundle (``python -m trainer.train``). The
    bundle is changed in place, or copied to ``--out`` first; a signed bundle must be copied
    (then signed again). The torch-CUDA backend needs nothing from here: it rebuilds the
    graph of ``model.onnx`` from the ``weights.safetensors`` and ``heads.safetensors`` that
    every export writes (``python -m trainer.refit_heads`` adds the heads to an older
    bundle). The ``--checkpoint`` of earlier versions, which added a pickled ``model.pt``
    that could not compute the OOD score, is refused with that explanation.

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
    p = subparsers.add_parser("export", help="FP16 ONNX, TensorRT engines, a Triton repository")
    sub = p.add_subparsers(dest="export_action", required=True, metavar="ACTION")

    ox = sub.add_parser("onnx", help="add the FP16 ONNX to a bundle")
    ox.add_argument("--bundle", type=Path, required=True)
    # Gone: refused with the reason, so that an old script learns what replaced it.
    ox.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    ox.add_argument("--out", type=Path, help="write a copy here instead of changing the bundle")
    ox.add_argument(
        "--keep-fp32", nargs="*", default=[], metavar="OP", help="op types kept in FP32"
    )
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


CHECKPOINT_GONE = (
    "--checkpoint is no longer needed and no model.pt is written: the torch backend rebuilds "
    "the graph of model.onnx (OOD score and calibration included) from the bundle's "
    "weights.safetensors and heads.safetensors, which every export writes. Export a new "
    "bundle with `python -m trainer.train`, or add the heads to an older one with "
    "`python -m trainer.refit_heads --bundle DIR --manifest CSV --version NEW --out NEW_DIR`"
)


def _onnx(config: NodeConfig, args: argparse.Namespace) -> int:
    from exporters.fp16 import Fp16Error
    from exporters.variants import add_fp16, copy_bundle

    if args.checkpoint is not None:
        return _fail(CHECKPOINT_GONE)
    try:
        target = copy_bundle(args.bundle, args.out) if args.out else args.bundle
        load_bundle(target)
        report = add_fp16(target, keep_fp32=tuple(args.keep_fp32))
        print(f"fp16: {report}")
    except Fp16Error as exc:
        return _fail(str(exc))
    except FameNodeError as exc:
        return _fail(str(exc))
    print(f"bundle updated and verified: {target}")
    return 0


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
