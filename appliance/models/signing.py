"""Ed25519 signatures over a bundle's ``manifest.json``, and the keys a node trusts.

The manifest holds the sha256 of every other file of the bundle, so one signature over
its exact bytes covers the whole bundle. The signature lives next to it, in
``manifest.sig`` (which the manifest therefore does not list):

.. code-block:: json

    {"algorithm": "ed25519", "public_key": "<base64, 32 bytes>", "signature": "<base64>"}

The signer's public key is carried so that a refusal can name the key that signed
(by fingerprint); it is trusted only when it equals one of the node's trusted keys
(``models.trusted_keys``).

Key files: private keys are PEM, PKCS#8 (``-----BEGIN PRIVATE KEY-----``, what
``openssl genpkey -algorithm ed25519`` writes); public keys are PEM SubjectPublicKeyInfo
(``-----BEGIN PUBLIC KEY-----``, what ``openssl pkey -pubout`` writes) or, for pasting,
one line with the 32 raw key bytes in base64. `generate_keypair` writes ``PREFIX.key``
(mode 0600) and ``PREFIX.pub``. Fingerprints are OpenSSH-style: ``SHA256:`` and the
unpadded base64 of the sha256 of the raw public key.

Errors are `SignatureError` (a `BundleError`), with `code` one of ``unsigned``,
``malformed``, ``bad_signature``, ``untrusted_key`` and the signer's `fingerprint` where
known; `KeyFileError` for a key file that cannot be used.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from appliance.errors import BundleError, FameNodeError

SIGNATURE_NAME = "manifest.sig"
ALGORITHM = "ed25519"

SignatureProblem = Literal["unsigned", "malformed", "bad_signature", "untrusted_key"]

_HOW_TO_TRUST = (
    "If your federation's coordinator confirms this fingerprint, add the coordinator's "
    "public key file to `models.trusted_keys` in the node's config"
)


class KeyFileError(FameNodeError):
    """A key file is missing, unreadable or not an ed25519 key; `path` names it."""

    def __init__(self, message: str, *, path: Path) -> None:
        self.path = path
        super().__init__(message)


class SignatureError(BundleError):
    """A bundle's signature is missing, malformed, wrong, or made by an untrusted key."""

    def __init__(
        self, message: str, *, code: SignatureProblem, fingerprint: str | None = None
    ) -> None:
        self.code = code
        self.fingerprint = fingerprint
        super().__init__(message)


@dataclass(frozen=True)
class TrustedKey:
    """A public key the node accepts signatures from, and where it was read."""

    key: Ed25519PublicKey
    source: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key)


@dataclass(frozen=True)
class Signature:
    """A verified signature: who signed, and whether that key is one the node trusts."""

    fingerprint: str
    trusted: bool


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(key: Ed25519PublicKey) -> str:
    """``SHA256:<unpadded base64>`` of the raw key, as OpenSSH prints fingerprints."""
    digest = hashlib.sha256(raw_public(key)).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


# -- key files -----------------------------------------------------------------------------
def generate_keypair(prefix: Path) -> tuple[Path, Path]:
    """Write a new key pair to ``PREFIX.key`` (private, 0600) and ``PREFIX.pub``.

    Raises
    ------
    KeyFileError
        either file exists already (a key is never overwritten).
    """
    private_path = prefix.with_name(prefix.name + ".key")
    public_path = prefix.with_name(prefix.name + ".pub")
    for path in (private_path, public_path):
        if path.exists():
            raise KeyFileError(
                f"{path} exists already; keys are never overwritten. Choose another --out "
                "prefix, or move the old key away first.",
                path=path,
            )
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    prefix.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    public_path.write_bytes(public_pem)
    return private_path, public_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    data = _read_key_file(path, "private")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(
            f"{path} is not an unencrypted PEM private key ({exc}). Expected the .key file "
            "written by `fame-node models keygen` or `openssl genpkey -algorithm ed25519`.",
            path=path,
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(
            f"{path} holds a {type(key).__name__}, not an ed25519 key; bundles are signed "
            "with ed25519 (`fame-node models keygen`).",
            path=path,
        )
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A PEM public key, or one line of base64 with the 32 raw key bytes."""
    data = _read_key_file(path, "public")
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text)
        except ValueError as exc:
            raise KeyFileError(f"{path} is not a valid PEM public key ({exc})", path=path) from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(
                f"{path} holds a {type(key).__name__}, not an ed25519 public key", path=path
            )
        return key
    try:
        return _public_from_b64(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise KeyFileError(
            f"{path} is neither a PEM public key (-----BEGIN PUBLIC KEY-----) nor one line of "
            "base64 with a 32-byte ed25519 key. Use the .pub file of `fame-node models keygen`.",
            path=path,
        ) from None


def load_trusted_keys(paths: Iterable[Path]) -> list[TrustedKey]:
    """The keys of `models.trusted_keys`; a missing or bad file raises `KeyFileError`."""
    keys: list[TrustedKey] = []
    for path in paths:
        try:
            keys.append(TrustedKey(load_public_key(path), str(path)))
        except KeyFileError as exc:
            raise KeyFileError(
                f"models.trusted_keys: {exc}. Put your federation coordinator's public key "
                "there (the .pub file of `fame-node models keygen`) or correct the path.",
                path=path,
            ) from None
    return keys


def _read_key_file(path: Path, kind: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{kind} key file {path} does not exist", path=path) from None
    except OSError as exc:
        raise KeyFileError(
            f"{kind} key file {path} cannot be read: {exc.strerror}", path=path
        ) from None


def _public_from_b64(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not base64: {exc}") from None
    if len(raw) != 32:
        raise ValueError(f"an ed25519 public key has 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


# -- sign and verify -----------------------------------------------------------------------
def sign_manifest(manifest_bytes: bytes, key: Ed25519PrivateKey) -> bytes:
    """The content of ``manifest.sig`` for these exact manifest bytes."""
    doc = {
        "algorithm": ALGORITHM,
        "public_key": base64.b64encode(raw_public(key.public_key())).decode("ascii"),
        "signature": base64.b64encode(key.sign(manifest_bytes)).decode("ascii"),
    }
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def verify_manifest(
    manifest_bytes: bytes,
    signature_bytes: bytes | None,
    trusted: Sequence[TrustedKey],
    *,
    require_trusted: bool,
    where: str = "this bundle",
) -> Signature | None:
    """Check ``manifest.sig`` against the manifest's bytes and the trusted keys.

    A signature that is present is always checked: a bad one is refused whatever the
    policy. With `require_trusted`, a missing signature or one by a key that is not in
    `trusted` is refused too; without it, both are accepted (None for unsigned).

    Raises
    ------
    SignatureError
        with `code` and, where known, the signer's `fingerprint`.
    """
    if signature_bytes is None:
        if require_trusted:
            raise SignatureError(
                f"{where} is not signed ({SIGNATURE_NAME} is missing) and this node requires "
                "signed models (models.require_signature = true). Ask your federation's "
                "coordinator for the signed bundle (`fame-node models sign`).",
                code="unsigned",
            )
        return None
    try:
        doc = json.loads(signature_bytes.decode("utf-8"))
        if not isinstance(doc, dict) or doc.get("algorithm") != ALGORITHM:
            raise ValueError(f"expected algorithm {ALGORITHM!r}")
        signer = _public_from_b64(str(doc["public_key"]))
        signature = base64.b64decode(str(doc["signature"]), validate=True)
    except (ValueError, KeyError, UnicodeDecodeError, binascii.Error) as exc:
        raise SignatureError(
            f"{where}: {SIGNATURE_NAME} is malformed ({exc}); expected the JSON written by "
            "`fame-node models sign`. Get a fresh copy of the bundle.",
            code="malformed",
        ) from None
    fp = fingerprint(signer)
    try:
        signer.verify(signature, manifest_bytes)
    except InvalidSignature:
        raise SignatureError(
            f"{where}: bad signature: {SIGNATURE_NAME} (key {fp}) does not match "
            "manifest.json, so the manifest was changed after it was signed. Do not use this "
            "bundle; get a fresh copy from your federation's coordinator.",
            code="bad_signature",
            fingerprint=fp,
        ) from None
    raw = raw_public(signer)
    is_trusted = any(raw_public(t.key) == raw for t in trusted)
    if require_trusted and not is_trusted:
        known = ", ".join(t.fingerprint for t in trusted) or "none configured"
        raise SignatureError(
            f"{where} is signed by key {fp}, which this node does not trust (trusted: "
            f"{known}). {_HOW_TO_TRUST}.",
            code="untrusted_key",
            fingerprint=fp,
        )
    return Signature(fingerprint=fp, trusted=is_trusted)


# -- describing ----------------------------------------------------------------------------
SignatureState = Literal["trusted", "untrusted", "unsigned", "bad_signature", "malformed"]


@dataclass(frozen=True)
class SignatureStatus:
    """What a bundle's signature is, for listings: only ``trusted`` may be shown "signed"."""

    state: SignatureState
    fingerprint: str | None = None

    @property
    def signed(self) -> bool:
        """True only when the signature verifies against a key this node trusts."""
        return self.state == "trusted"

    def __str__(self) -> str:
        if self.state == "trusted":
            return f"signed (trusted key {self.fingerprint})"
        if self.state == "untrusted":
            return f"signed by an untrusted key {self.fingerprint}"
        if self.state == "bad_signature":
            return f"bad signature (key {self.fingerprint}): manifest changed after signing"
        if self.state == "malformed":
            return f"malformed {SIGNATURE_NAME}"
        return "unsigned"


def signature_status(
    manifest_bytes: bytes, signature_bytes: bytes | None, trusted: Sequence[TrustedKey]
) -> SignatureStatus:
    """Check the signature of these manifest bytes and say what it is; never raises."""
    try:
        sig = verify_manifest(manifest_bytes, signature_bytes, trusted, require_trusted=False)
    except SignatureError as exc:
        state: SignatureState = "bad_signature" if exc.code == "bad_signature" else "malformed"
        return SignatureStatus(state, exc.fingerprint)
    if sig is None:
        return SignatureStatus("unsigned")
    return SignatureStatus("trusted" if sig.trusted else "untrusted", sig.fingerprint)
