"""Adding derived files to an existing bundle: the FP16 ONNX and TensorRT engines.

What ``fame-node export onnx`` and ``fame-node export engines`` write (the names are in
`appliance.runtime.variants`). The bundle's ``model.onnx`` is never replaced: every added
file is derived from its verified bytes. The bundle is verified first; the new files are
then written from bytes in memory and their sha256 taken of those same bytes (so a file
that changes on disk meanwhile can never be recorded), the manifest is rewritten, and the
bundle is read back with `load_bundle` before returning.

The torch backend's files (``weights.safetensors``, ``heads.safetensors``) are not added
here: the export that fits the heads writes them with ``model.onnx``
(`exporters.fame_bundle`), and `trainer.refit_heads` adds the heads to an older bundle.
Nothing here needs torch.

A signed bundle is refused (the signature covers the manifest, which changes): add the
variants before signing, or write a copy with `copy_bundle` and sign that.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from appliance.bundle import MANIFEST_NAME, Bundle, load_bundle, sha256_bytes
from appliance.errors import BundleError
from appliance.models.signing import SIGNATURE_NAME
from appliance.runtime.variants import FP16_FILE, engine_file
from exporters.fp16 import DEFAULT_KEEP_FP32, Fp16Report, export_fp16


def copy_bundle(src: Path, dst: Path) -> Path:
    """Copy a bundle's verified bytes (without its signature) to `dst`, which must not
    exist."""
    if dst.exists():
        raise BundleError(f"{dst} already exists; choose a new folder for the copy")
    bundle = load_bundle(src)
    dst.mkdir(parents=True)
    for rel, data in [(MANIFEST_NAME, bundle.manifest_bytes), *bundle.contents.items()]:
        _write(dst / rel, data)
    return dst


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def add_files(
    bundle_dir: Path, files: Mapping[str, bytes], *, evaluation: Mapping[str, Any] | None = None
) -> Bundle:
    """Write `files` (bundle-relative name -> content) into the verified bundle, record them
    in the manifest with the sha256 of those bytes, and merge `evaluation` into its
    ``evaluation``.

    Raises
    ------
    BundleError
        the bundle does not verify, is signed, or a name leaves the bundle.
    """
    bundle = load_bundle(bundle_dir)
    if (bundle_dir / SIGNATURE_NAME).exists():
        raise BundleError(
            f"bundle {bundle_dir} is signed: adding files would invalidate its signature. Add "
            "them before signing (or write a copy with --out) and sign again."
        )
    checksums = dict(bundle.manifest.files)
    for rel in files:
        parts = PurePosixPath(rel).parts
        if (
            not parts
            or PurePosixPath(rel).is_absolute()
            or ".." in parts
            or rel in (MANIFEST_NAME, SIGNATURE_NAME)
        ):
            raise BundleError(f"{rel!r} is not a file name inside bundle {bundle_dir}")
    for rel, data in files.items():
        _write(bundle_dir / rel, data)
        checksums[rel] = sha256_bytes(data)
    manifest = bundle.manifest.model_copy(
        update={
            "files": checksums,
            "evaluation": {**bundle.manifest.evaluation, **(evaluation or {})},
        }
    )
    path = bundle_dir / MANIFEST_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return load_bundle(bundle_dir)


def add_fp16(bundle_dir: Path, *, keep_fp32: tuple[str, ...] = DEFAULT_KEEP_FP32) -> Fp16Report:
    """Write ``model.fp16.onnx`` from the bundle's verified model, check it, record it."""
    bundle = load_bundle(bundle_dir)
    _refuse_signed(bundle_dir)
    size = bundle.manifest.preprocess_params().size
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((b, 1, size, size)).astype(np.float32) for b in (1, 4)]
    with tempfile.TemporaryDirectory() as tmp:  # private to this process
        src = Path(tmp) / bundle.manifest.model_file
        src.write_bytes(bundle.model_bytes)
        report = export_fp16(src, Path(tmp) / FP16_FILE, keep_fp32=keep_fp32, inputs=inputs)
        half = report.path.read_bytes()
    report = dataclasses.replace(report, path=bundle_dir / FP16_FILE)
    diffs = {k: float(f"{v:.3g}") for k, v in report.max_abs_diff.items()}
    add_files(
        bundle_dir,
        {FP16_FILE: half},
        evaluation={
            "onnx_fp16": {
                "max_abs_diff_vs_fp32": diffs,
                "kept_fp32": list(report.kept_fp32),
                "note": "ONNX Runtime CPU, random inputs at batch 1 and 4",
            }
        },
    )
    return report


def add_engine(bundle_dir: Path, name: str, data: bytes) -> Bundle:
    """Add a verified engine (`exporters.engines.VerifiedEngine`'s name and bytes, never a
    file from the cache by path) to ``engines/`` of the bundle and record it."""
    _refuse_signed(bundle_dir)
    if "/" in name or not name.endswith(".plan"):
        raise BundleError(f"{name!r} is not an engine file name (NAME.plan)")
    return add_files(bundle_dir, {engine_file(name): data})


def _refuse_signed(bundle_dir: Path) -> None:
    if (bundle_dir / SIGNATURE_NAME).exists():
        raise BundleError(
            f"bundle {bundle_dir} is signed: adding files would invalidate its signature. "
            "Write a copy with --out, then sign it again (`fame-node models sign`)."
        )
