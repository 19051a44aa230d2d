"""What `fame-node models list` shows: the installed bundles and what their signatures are.

A bundle is listed as signed only when ``manifest.sig`` verifies over its manifest against
a key this node trusts (`appliance.models.signing.signature_status`); otherwise the listing
says what it is: unsigned, signed by an untrusted key (with its fingerprint), a bad or a
malformed signature. Listing reads manifests and signatures only; ``models verify`` checks
every file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.bundle import Bundle, load_bundle
from appliance.errors import BundleError
from appliance.models.signing import (
    SIGNATURE_NAME,
    SignatureStatus,
    TrustedKey,
    signature_status,
)


@dataclass(frozen=True)
class InstalledModel:
    """A bundle in the models folder (or the shipped initial one, not yet installed).

    `signed` is True only when the signature verifies against a trusted key; `signature`
    says what it is otherwise (unsigned, untrusted key SHA256:..., bad signature)."""

    label: str
    path: Path
    created: str | None
    signed: bool
    signature: str
    active: bool


def signature_of(bundle: Bundle, trusted: Sequence[TrustedKey]) -> SignatureStatus:
    """What the signature of `bundle` (read with or without verification) is."""
    try:
        sig: bytes | None = (bundle.path / SIGNATURE_NAME).read_bytes()
    except FileNotFoundError:
        sig = None
    except OSError:
        return SignatureStatus("malformed")
    return signature_status(bundle.manifest_bytes, sig, trusted)


def list_installed(
    root: Path, initial: Path, active_path: Path, trusted: Sequence[TrustedKey]
) -> list[InstalledModel]:
    """The bundles in `root` (sorted), then `initial` unless that version is among them."""
    paths: list[Path] = []
    if root.is_dir():
        paths += sorted(p for p in root.iterdir() if "@" in p.name and p.is_dir())
    paths.append(initial)
    found: list[InstalledModel] = []
    for path in paths:
        try:
            bundle = load_bundle(path, verify=False)
        except BundleError:
            continue
        if any(m.label == bundle.version_label for m in found):
            continue  # the shipped initial bundle, installed already
        status = signature_of(bundle, trusted)
        found.append(
            InstalledModel(
                label=bundle.version_label,
                path=path,
                created=bundle.manifest.created,
                signed=status.signed,
                signature=str(status),
                active=path.resolve() == active_path.resolve(),
            )
        )
    return found
