"""Writing a verified bundle into the models folder: the bytes verified, durably, atomically.

`write_copy` writes the manifest, the signature and every listed file of a verified
`Bundle` from the bytes that were hashed (never by copying the source files again, which
may have changed since), each fsynced, into a temporary folder beside the destination;
the caller's `verify` must accept the copy before it is renamed into place, so
``<models>/<name>@<version>/`` appears complete or not at all, and survives a power cut.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from appliance.bundle import MANIFEST_NAME, Bundle
from appliance.models.signing import SIGNATURE_NAME
from appliance.results.durable import sync_folder


def write_copy(bundle: Bundle, dest: Path, verify: Callable[[Path], Bundle]) -> bool:
    """Write `bundle` to `dest` (which must not exist); False if another process wrote
    `dest` first (the caller then compares the two).

    Raises
    ------
    OSError
        the folder cannot be written.
    BundleError
        the copy does not verify.
    """
    root = dest.parent
    tmp = root / f".installing-{dest.name}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        members = {MANIFEST_NAME: bundle.manifest_bytes}
        members.update({rel: bundle.data(rel) for rel in bundle.manifest.files})
        if bundle.signature_bytes is not None:
            members[SIGNATURE_NAME] = bundle.signature_bytes
        for rel, data in members.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            _write_durably(tmp / rel, data)
        verify(tmp)  # the copy, not only the source, must verify
        for folder in sorted({(tmp / rel).parent for rel in members}, reverse=True):
            sync_folder(folder)
        try:
            os.rename(tmp, dest)
        except OSError:
            if dest.is_dir():
                return False
            raise
        sync_folder(root)
        return True
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _write_durably(path: Path, data: bytes) -> None:
    with path.open("xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
