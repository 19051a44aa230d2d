"""Identifiers in what the node writes: pseudonyms for logs, safe text for terminals.

`Pseudonymizer`: a keyed hash (HMAC-SHA256) with a secret kept on the node: the same
identifier always maps to the same short pseudonym on this node (so logs can be
correlated), and the pseudonym cannot be reversed or matched across nodes without the key.
Logs name files only by pseudonym (real exports name files after patients).

`shown` / `shown_name`: any text or file name as a terminal or a log may show it. People
at the CLI and the GUI may see file names, but a name is chosen by whoever wrote the file:
a newline in it forges a log line, an escape sequence rewrites the terminal, bidi controls
reorder what is read, and bytes that are not UTF-8 (``os.fsdecode`` turns them into lone
surrogates) make printing raise. Those are shown escaped, never raw.
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
        # surrogateescape: a file name that is not UTF-8 (os.fsdecode) is hashed as the
        # bytes it was on disk, instead of raising.
        raw = value.encode("utf-8", "surrogateescape")
        digest = hmac.new(self._key, raw, hashlib.sha256).hexdigest()
        return f"{prefix}:{digest[:10]}"


_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, kept by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def shown(text: str, *, keep: str = "") -> str:
    """`text` with everything a terminal or log would not show as itself escaped.

    Control characters (newline, ESC, DEL, C1), format characters (bidi overrides,
    zero-width), separators other than the space, unassigned code points and lone
    surrogates are written as ``\\n``, ``\\x1b``, ``\\u202e``...; a byte that was not
    UTF-8 (a surrogate from ``os.fsdecode``) as ``\\xNN``. Printable text, accents and
    other scripts included, is unchanged. Characters in `keep` are left as they are (a
    traceback keeps its newlines).
    """
    if text.isprintable() and text.isascii():
        return text  # the common case, checked at C speed
    return "".join(c if c.isprintable() or c in keep else _escape(c) for c in text)


def shown_name(name: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> str:
    """A file name or path as a person may see it: `shown`, from str, bytes or a path.

    A byte that is not UTF-8 is shown as ``\\xNN``, as the store records such a name
    (`appliance.store.job_recovery.path_text`), so `fame-node process` and `results` show
    the same text for the same file. A backslash is left as it is: the name that holds the
    four characters ``\\xe9`` looks like the one with the byte 0xE9, which is harmless (what
    matters is that no control character reaches the terminal raw).
    """
    raw = os.fspath(name)
    return shown(os.fsdecode(raw) if isinstance(raw, bytes) else raw)
