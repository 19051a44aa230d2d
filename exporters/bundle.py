"""Writing a model bundle: ``model.onnx``, extra files, and ``manifest.json`` with checksums.

The manifest is built with `appliance.bundle.Manifest`, the model the node reads, and the
written bundle is read back with `appliance.bundle.load_bundle` before `write_bundle`
returns, so an exporter cannot produce a bundle the node would refuse.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.bundle import MANIFEST_NAME, Manifest, TensorSpec, load_bundle, sha256_file
from appliance.errors import BundleError

MODEL_FILE = "model.onnx"


def _copy(src: Path, dst: Path) -> None:
    if src.resolve() == dst.resolve():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)


def write_bundle(
    out_dir: Path,
    model_onnx_path: Path,
    *,
    name: str,
    version: str,
    task: str,
    classes: list[str],
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    preprocessing: dict[str, Any],
    postprocessing: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    extra_files: Mapping[str, Path] | None = None,
) -> Path:
    """Write a bundle to `out_dir` and verify it; returns `out_dir`.

    `model_onnx_path` is copied to ``out_dir/model.onnx``; `extra_files` maps a relative
    path inside the bundle to the file to copy there (e.g. ``{"training_log.json": ...}``).
    ``manifest.json`` lists the sha256 of every copied file.

    Raises
    ------
    BundleError
        a source file is missing, a relative path leaves the bundle, or the written bundle
        does not verify.
    """
    sources: dict[str, Path] = {MODEL_FILE: model_onnx_path, **(extra_files or {})}
    for rel, src in sources.items():
        rel_path = Path(rel)
        if rel_path.is_absolute() or ".." in rel_path.parts or rel == MANIFEST_NAME:
            raise BundleError(
                f"bundle file name {rel!r} must be a relative path inside the bundle and not "
                f"{MANIFEST_NAME}"
            )
        if not src.is_file():
            raise BundleError(f"cannot write bundle {out_dir}: {src} (for {rel}) does not exist")
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for rel, src in sources.items():
        dst = out_dir / rel
        _copy(src, dst)
        files[rel] = sha256_file(dst)
    manifest = Manifest(
        name=name,
        version=version,
        task=task,
        classes=classes,
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        model_file=MODEL_FILE,
        inputs=inputs,
        outputs=outputs,
        preprocessing=preprocessing,
        postprocessing=postprocessing or {},
        training=training or {},
        evaluation=evaluation or {},
        files=files,
    )
    tmp = out_dir / (MANIFEST_NAME + ".tmp")
    tmp.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    tmp.replace(out_dir / MANIFEST_NAME)
    load_bundle(out_dir)  # raises BundleError if the node would refuse it
    return out_dir


def record_evaluation(bundle_dir: Path, name: str, figures: Mapping[str, Any]) -> Manifest:
    """Add measured figures under ``evaluation[name]`` in the bundle's manifest.

    Only for bundles being prepared for release: a signature covers the manifest bytes,
    so a signed bundle is refused (record first, then sign).

    Raises
    ------
    BundleError
        the bundle does not verify, or it is already signed.
    """
    from appliance.models.signing import SIGNATURE_NAME  # the registry's signing module

    if (bundle_dir / SIGNATURE_NAME).exists():
        raise BundleError(
            f"bundle {bundle_dir} is signed: recording figures would invalidate its signature. "
            "Record evaluations before signing, then sign again."
        )
    manifest = load_bundle(bundle_dir).manifest
    updated = manifest.model_copy(
        update={"evaluation": {**manifest.evaluation, name: dict(figures)}}
    )
    path = bundle_dir / MANIFEST_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(updated.model_dump_json(indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return load_bundle(bundle_dir).manifest
