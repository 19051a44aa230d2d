"""Model bundles: a directory with `manifest.json`, `model.onnx` and (later) engines.

The manifest names the model, its task and classes, the input and output tensors, the
preprocessing it was trained with, its provenance and its measured evaluation, and the
sha256 of every other file in the bundle. `load_bundle` refuses a bundle whose manifest
does not validate or whose files do not match their checksums.

The exporter (`exporters/bundle.py`) writes bundles with the same `Manifest` model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from appliance.errors import BundleError
from appliance.preprocess import PreprocessParams

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1


class TensorSpec(BaseModel):
    """One input or output tensor; dynamic axes are named strings (e.g. "batch")."""

    model_config = ConfigDict(extra="forbid")
    name: str
    shape: list[int | str]
    dtype: str = "float32"


class Manifest(BaseModel):
    """The `manifest.json` of a model bundle."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = Field(MANIFEST_SCHEMA_VERSION, description="manifest format version")
    name: str
    version: str
    task: str = Field(description="e.g. 'segmentation+classification'")
    classes: list[str]
    created: str = Field(description="ISO 8601 UTC time the bundle was written")
    model_file: str = "model.onnx"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    preprocessing: dict[str, Any]
    postprocessing: dict[str, Any] = Field(
        default_factory=dict, description="e.g. the mask threshold chosen on validation data"
    )
    training: dict[str, Any] = Field(default_factory=dict, description="data, epochs, seed, DP")
    evaluation: dict[str, Any] = Field(default_factory=dict, description="measured figures")
    files: dict[str, str] = Field(description="sha256 of every other file, by relative path")

    def preprocess_params(self) -> PreprocessParams:
        return PreprocessParams.from_dict(self.preprocessing)


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk."""

    path: Path
    manifest: Manifest

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest.model_file

    @property
    def version_label(self) -> str:
        return f"{self.manifest.name}@{self.manifest.version}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_bundle(path: Path, *, verify: bool = True) -> Bundle:
    """Read and (by default) verify the bundle at `path`.

    Raises
    ------
    BundleError
        the directory or manifest is missing, the manifest does not validate, a file is
        missing, or a checksum does not match.
    """
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(
            f"no model bundle at {path}: {MANIFEST_NAME} is missing. Point `models.bundle` in "
            "the config at a bundle directory (the default one ships in models/default)."
        )
    try:
        raw = json.loads(manifest_path.read_text(encoding="utf-8"))
        manifest = Manifest.model_validate(raw)
    except (json.JSONDecodeError, ValidationError) as exc:
        raise BundleError(f"the manifest of bundle {path} is invalid: {exc}") from exc
    if manifest.schema_version != MANIFEST_SCHEMA_VERSION:
        raise BundleError(
            f"bundle {path} has manifest schema_version {manifest.schema_version}; this node "
            f"reads version {MANIFEST_SCHEMA_VERSION}. Upgrade the node or re-export the bundle."
        )
    if manifest.model_file not in manifest.files:
        raise BundleError(f"bundle {path}: the manifest has no checksum for {manifest.model_file}")
    try:
        manifest.preprocess_params()
    except ValueError as exc:
        raise BundleError(f"bundle {path}: bad preprocessing parameters: {exc}") from exc
    if verify:
        for rel, expected in manifest.files.items():
            file = path / rel
            if not file.is_file():
                raise BundleError(f"bundle {path}: file {rel} listed in the manifest is missing")
            actual = sha256_file(file)
            if actual != expected:
                raise BundleError(
                    f"bundle {path}: checksum mismatch for {rel} (manifest {expected[:12]}..., "
                    f"file {actual[:12]}...). The bundle was altered or damaged; reinstall it."
                )
    return Bundle(path=path, manifest=manifest)
