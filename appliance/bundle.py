"""Model bundles: a directory with `manifest.json`, `model.onnx` and (later) engines.

The manifest names the model, its task and classes, the input and output tensors, the
preprocessing it was trained with, its provenance and its measured evaluation, and the
sha256 of every other file in the bundle. `load_bundle` refuses a bundle whose manifest
does not validate or whose files do not match their checksums, and checks the ed25519
signature in ``manifest.sig`` (over the exact bytes of ``manifest.json``, so it covers every
file) against the keys the node trusts; see `appliance.models.signing`. ``manifest.sig`` is
not listed in `files`: it signs the manifest that lists them.

The exporter (`exporters/bundle.py`) writes bundles with the same `Manifest` model;
``fame-node models sign`` adds the signature.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from appliance.errors import BundleError
from appliance.models.signing import SIGNATURE_NAME, Signature, TrustedKey, verify_manifest
from appliance.preprocess import PreprocessParams

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1
# Names and versions become folder names (`models/<name>@<version>/`): no '/', '@', spaces.
LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"


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
    name: str = Field(pattern=LABEL_PATTERN, description="letters, digits, . _ + -")
    version: str = Field(pattern=LABEL_PATTERN, description="e.g. 1.2.0")
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
    signature: Signature | None = None  # None: unsigned, or not verified (verify=False)

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


def load_bundle(
    path: Path,
    *,
    verify: bool = True,
    trusted_keys: Sequence[TrustedKey] = (),
    require_signature: bool = False,
) -> Bundle:
    """Read and (by default) verify the bundle at `path`.

    With `verify`, every file's sha256 is checked and so is ``manifest.sig`` when present
    (a bad signature is always refused); `require_signature` also refuses an unsigned
    bundle and one signed by a key that is not in `trusted_keys`.

    Raises
    ------
    BundleError
        the directory or manifest is missing, the manifest does not validate, a file is
        missing, or a checksum does not match.
    SignatureError
        (a `BundleError`) the signature is bad, or missing or untrusted where required.
    """
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(
            f"no model bundle at {path}: {MANIFEST_NAME} is missing. Point `models.bundle` in "
            "the config at a bundle directory (the default one ships in models/default)."
        )
    try:
        manifest_bytes = manifest_path.read_bytes()
        raw = json.loads(manifest_bytes.decode("utf-8"))
        manifest = Manifest.model_validate(raw)
    except OSError as exc:
        raise BundleError(f"the manifest of bundle {path} cannot be read: {exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as exc:
        raise BundleError(f"the manifest of bundle {path} is invalid: {exc}") from exc
    if manifest.schema_version != MANIFEST_SCHEMA_VERSION:
        raise BundleError(
            f"bundle {path} has manifest schema_version {manifest.schema_version}; this node "
            f"reads version {MANIFEST_SCHEMA_VERSION}. Upgrade the node or re-export the bundle."
        )
    if manifest.model_file not in manifest.files:
        raise BundleError(f"bundle {path}: the manifest has no checksum for {manifest.model_file}")
    for rel in manifest.files:
        _check_member(path, rel)
    try:
        manifest.preprocess_params()
    except ValueError as exc:
        raise BundleError(f"bundle {path}: bad preprocessing parameters: {exc}") from exc
    signature: Signature | None = None
    if verify:
        for rel, expected in manifest.files.items():
            file = path / rel
            if not file.is_file():
                raise BundleError(f"bundle {path}: file {rel} listed in the manifest is missing")
            actual = sha256_file(file)
            if actual != expected:
                raise BundleError(
                    f"bundle {path}: checksum mismatch for {rel}: the manifest expects sha256 "
                    f"{expected[:12]}..., the file has {actual[:12]}.... The bundle was altered "
                    "or damaged; get a fresh copy and check it with `fame-node models verify`."
                )
        sig_path = path / SIGNATURE_NAME
        signature = verify_manifest(
            manifest_bytes,
            sig_path.read_bytes() if sig_path.is_file() else None,
            trusted_keys,
            require_trusted=require_signature,
            where=f"bundle {path}",
        )
    return Bundle(path=path, manifest=manifest, signature=signature)


def _check_member(path: Path, rel: str) -> None:
    """A file named by the manifest must stay inside the bundle and not be its signature."""
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or ".." in parts or "\\" in rel:
        raise BundleError(
            f"bundle {path}: the manifest lists {rel!r}, which is not a relative path inside "
            "the bundle; the bundle is malformed and is refused."
        )
    if rel in (MANIFEST_NAME, SIGNATURE_NAME):
        raise BundleError(
            f"bundle {path}: the manifest lists {rel!r} among its files; {MANIFEST_NAME} and "
            f"{SIGNATURE_NAME} cannot be checksummed by the manifest. Re-export the bundle."
        )
