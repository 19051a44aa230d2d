"""Pseudonyms for identifiers that must not appear in clear in logs.

A keyed hash (HMAC-SHA256) with a secret kept on the node: the same identifier always
maps to the same short pseudonym on this node (so logs can be correlated), and the
pseudonym cannot be reversed or matched across nodes without the key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

KEY_FILE = "pseudonym.key"


class Pseudonymizer:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the pseudonymisation key must be at least 16 bytes")
        self._key = key

    @classmethod
    def from_dir(cls, folder: Path) -> Pseudonymizer:
        """Load the node's key from `folder`, creating it (mode 0600) on first use."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / KEY_FILE
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(32))
        return cls(path.read_bytes())

    def __call__(self, value: str | None, prefix: str = "id") -> str:
        if not value:
            return f"{prefix}:-"
        digest = hmac.new(self._key, value.encode("utf-8"), hashlib.sha256).hexdigest()
        return f"{prefix}:{digest[:10]}"
