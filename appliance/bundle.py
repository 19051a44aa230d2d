"""Model bundles: a directory with `manifest.json`, `model.onnx` and optional variants.

The manifest names the model, its task and classes, the input and output tensors, the
preprocessing it was trained with, the post-processing it was tuned with, its provenance
and its measured evaluation, and the sha256 of every other file in the bundle.
``manifest.sig`` (not listed: it signs the manifest that lists the rest) holds an ed25519
signature over the exact bytes of ``manifest.json``; see `appliance.models.signing`.

`load_bundle` verifies *files, not names*:

- nothing in the bundle folder is a symbolic link, FIFO or device (`appliance.models.
  safe_files` opens every member without following links), and the folder holds no file
  the manifest does not list (besides ``manifest.json`` and ``manifest.sig``);
- every listed file is read once, its sha256 taken of the bytes read, and those bytes are
  kept on the `Bundle` (`Bundle.data`): the backends are built from them, never by
  reopening the path, so a file swapped after verification is never used;
- no ONNX file references external data (`appliance.models.onnx_external`): tensors
  outside the verified bytes are refused, not loaded;
- the manifest's preprocessing and post-processing values are in range;
- the signature verifies (a bad one is always refused; unsigned and untrusted ones where
  the node requires signatures).

The exporter (`exporters/bundle.py`) writes bundles with the same `Manifest` model;
``fame-node models sign`` adds the signature.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from appliance.errors import BundleError
from appliance.models.onnx_external import OnnxFormatError, external_tensors
from appliance.models.safe_files import list_tree, open_folder, read_member, read_optional
from appliance.models.signing import SIGNATURE_NAME, Signature, TrustedKey, verify_manifest
from appliance.preprocess import PreprocessParams

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1
MAX_MANIFEST_BYTES = 4 << 20  # a manifest is a few KB; anything this big is not one
# Names and versions become folder names (`models/<name>@<version>/`): no '/', '@', spaces.
LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"

# The post-processing keys the node reads (appliance.analysis), and what each must be.
POSTPROCESSING_KEYS: dict[str, str] = {
    "mask_threshold": "a number strictly between 0 and 1 (the lesion probability cut-off)",
    "min_lesion_area_px": "a number >= 0 (network input pixels; smaller components dropped)",
    "ood_threshold": "a number >= 0 (out-of-distribution scores above it are flagged)",
    "uncertainty_threshold": "a number >= 0 (fold-ensemble disagreements above it are flagged)",
}


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


def postprocessing_problems(post: Mapping[str, Any]) -> list[str]:
    """One line per bad post-processing value: the key, the value, what is expected."""
    problems: list[str] = []
    for key, value in post.items():
        if key not in POSTPROCESSING_KEYS:
            known = ", ".join(POSTPROCESSING_KEYS)
            problems.append(
                f"postprocessing.{key} = {value!r} is not a key this node reads (known: {known})"
            )
            continue
        number = (
            float(value)
            if isinstance(value, int | float) and not isinstance(value, bool)
            else math.nan
        )
        ok = math.isfinite(number) and (
            0.0 < number < 1.0 if key == "mask_threshold" else number >= 0.0
        )
        if not ok:
            problems.append(
                f"postprocessing.{key} = {value!r}; expected {POSTPROCESSING_KEYS[key]}"
            )
    return problems


@dataclass(frozen=True)
class Bundle:
    """A bundle read from disk; with `verify` (the default of `load_bundle`), verified.

    `contents` holds the verified bytes of every file the manifest lists (empty for a
    bundle read with ``verify=False``, which only describes a bundle and runs nothing);
    `manifest_bytes` are the exact bytes the manifest was parsed, and signed, from, and
    `signature_bytes` those of ``manifest.sig`` (None when there is none).
    """

    path: Path
    manifest: Manifest
    signature: Signature | None = None  # None: unsigned, or not verified (verify=False)
    manifest_bytes: bytes = b""
    contents: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    signature_bytes: bytes | None = field(default=None, repr=False)

    @property
    def model_path(self) -> Path:
        """Where the model was read from: for messages and offline tools, never to load."""
        return self.path / self.manifest.model_file

    @property
    def version_label(self) -> str:
        return f"{self.manifest.name}@{self.manifest.version}"

    @property
    def verified(self) -> bool:
        return bool(self.contents)

    def has(self, rel: str) -> bool:
        """Whether the manifest lists `rel` (so its verified bytes are in `contents`)."""
        return rel in self.manifest.files

    def data(self, rel: str) -> bytes:
        """The verified bytes of bundle file `rel`.

        Raises
        ------
        BundleError
            the manifest does not list `rel`, or the bundle was read without verifying.
        """
        if rel not in self.manifest.files:
            raise BundleError(f"bundle {self.path}: the manifest does not list {rel!r}")
        if rel not in self.contents:
            raise BundleError(
                f"bundle {self.path} was read without verification; load it with "
                "load_bundle(path) (verify=True) before using its files"
            )
        return self.contents[rel]

    @property
    def model_bytes(self) -> bytes:
        return self.data(self.manifest.model_file)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
    """Read and (by default) verify the bundle at `path` (see the module docstring).

    With `verify`, the folder's members are checked (no links, special or unlisted files),
    every listed file is read once and its sha256 checked, no ONNX file may reference
    external data, and ``manifest.sig`` is checked when present (a bad signature is always
    refused); `require_signature` also refuses an unsigned bundle and one signed by a key
    that is not in `trusted_keys`. Without `verify` only the manifest is read and checked.

    Raises
    ------
    BundleError
        the directory or manifest is missing, the manifest does not validate, a member is
        a symlink, special or unlisted file, a file is missing, a checksum does not match,
        or an ONNX model is malformed or uses external data.
    SignatureError
        (a `BundleError`) the signature is bad, or missing or untrusted where required.
    """
    where = f"bundle {path}"
    if not (path / MANIFEST_NAME).is_file():
        raise BundleError(
            f"no model bundle at {path}: {MANIFEST_NAME} is missing. Point `models.bundle` in "
            "the config at a bundle directory (the default one ships in models/default)."
        )
    with open_folder(path) as root:
        manifest_bytes = read_member(root, MANIFEST_NAME, where)
        manifest = _parse_manifest(path, manifest_bytes)
        if not verify:
            return Bundle(path=path, manifest=manifest, manifest_bytes=manifest_bytes)
        _check_members(path, manifest, list_tree(root, where))
        contents: dict[str, bytes] = {}
        for rel, expected in manifest.files.items():
            try:
                data = read_member(root, rel, where)
            except FileNotFoundError:
                raise BundleError(
                    f"{where}: file {rel} listed in the manifest is missing"
                ) from None
            actual = sha256_bytes(data)
            if actual != expected:
                raise BundleError(
                    f"{where}: checksum mismatch for {rel}: the manifest expects sha256 "
                    f"{expected[:12]}..., the file has {actual[:12]}.... The bundle was altered "
                    "or damaged; get a fresh copy and check it with `fame-node models verify`."
                )
            if rel.endswith(".onnx"):
                _check_onnx(where, rel, data)
            contents[rel] = data
        signature_bytes = read_optional(root, SIGNATURE_NAME, where)
    signature = verify_manifest(
        manifest_bytes,
        signature_bytes,
        trusted_keys,
        require_trusted=require_signature,
        where=where,
    )
    return Bundle(path, manifest, signature, manifest_bytes, contents, signature_bytes)


def _parse_manifest(path: Path, manifest_bytes: bytes) -> Manifest:
    if len(manifest_bytes) > MAX_MANIFEST_BYTES:
        raise BundleError(
            f"the manifest of bundle {path} has {len(manifest_bytes)} bytes; a manifest has "
            f"at most {MAX_MANIFEST_BYTES}. This is not a model bundle."
        )
    try:
        raw = json.loads(manifest_bytes.decode("utf-8"))
        manifest = Manifest.model_validate(raw)
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
        _check_name(path, rel)
    try:
        manifest.preprocess_params()
    except ValueError as exc:
        raise BundleError(f"bundle {path}: bad preprocessing parameters: {exc}") from exc
    problems = postprocessing_problems(manifest.postprocessing)
    if problems:
        raise BundleError(
            f"bundle {path}: bad post-processing in the manifest: "
            + "; ".join(problems)
            + ". Re-export the bundle with valid values."
        )
    return manifest


def _check_name(path: Path, rel: str) -> None:
    """A file named by the manifest must stay inside the bundle and not be its signature."""
    parts = PurePosixPath(rel).parts
    if (
        not parts
        or PurePosixPath(rel).is_absolute()
        or ".." in parts
        or "." in rel.split("/")
        or "\\" in rel
        or "//" in rel
    ):
        raise BundleError(
            f"bundle {path}: the manifest lists {rel!r}, which is not a relative path inside "
            "the bundle; the bundle is malformed and is refused."
        )
    if rel in (MANIFEST_NAME, SIGNATURE_NAME):
        raise BundleError(
            f"bundle {path}: the manifest lists {rel!r} among its files; {MANIFEST_NAME} and "
            f"{SIGNATURE_NAME} cannot be checksummed by the manifest. Re-export the bundle."
        )


def _check_members(path: Path, manifest: Manifest, present: list[str]) -> None:
    """The folder holds exactly the manifest, its signature and the files it lists."""
    allowed = {MANIFEST_NAME, SIGNATURE_NAME, *manifest.files}
    unlisted = [rel for rel in present if rel not in allowed]
    if unlisted:
        shown = ", ".join(repr(r) for r in unlisted[:5])
        more = f" and {len(unlisted) - 5} more" if len(unlisted) > 5 else ""
        raise BundleError(
            f"bundle {path} holds file(s) its manifest does not list: {shown}{more}. No "
            "checksum covers them (an ONNX model's external weights would be one), so the "
            "bundle is refused. Remove them, or re-export the bundle so the manifest lists "
            "every file."
        )


def _check_onnx(where: str, rel: str, data: bytes) -> None:
    try:
        external = external_tensors(data)
    except OnnxFormatError as exc:
        raise BundleError(
            f"{where}: {rel} is not an ONNX model ({exc}); re-export the bundle."
        ) from None
    if external:
        shown = ", ".join(repr(n) for n in external[:5])
        raise BundleError(
            f"{where}: {rel} keeps tensor data in external files ({len(external)} tensor(s): "
            f"{shown}). The node loads models only from their verified bytes and refuses "
            "external data; re-export the model with its weights inside the .onnx file "
            "(onnx.save_model(..., save_as_external_data=False))."
        )
