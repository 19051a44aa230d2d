"""The engine cache: files the node built (TensorRT plans, FP16 ONNX, the timing cache),
trusted only by the record the node wrote when it built each of them.

Deserialising a TensorRT engine runs native code, so a file in ``runtime.engine_cache_dir``
is never loaded because of its name. When the node builds an entry it writes, atomically
and durably, the entry and then its *record* in ``records/`` (a folder only this user may
write: created 0700, refused if a link, owned by another user or group / world writable):

.. code-block:: json

    {"format": "fame-node-cache-record/1", "entry": "<file name>", "sha256": "...",
     "bytes": 123, "source_sha256": "<sha256 of the ONNX it was built from>",
     "build_key": {"kind": "tensorrt-plan", "gpu": "...", "tensorrt": "...", ...}}

`EngineCache.load` reads the entry once (no link followed), hashes those bytes, and returns
them only when the record exists and matches them, the source and the build key it is asked
for; otherwise it logs a warning naming the entry (its name is its build key; no patient
data is ever in it) and returns None, and the caller rebuilds. The caller then uses exactly
the bytes returned: nothing is reopened by path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.errors import BundleError
from appliance.models.safe_files import open_folder, read_optional
from appliance.results.durable import sync_folder

log = logging.getLogger("fame_node.runtime")

RECORD_FORMAT = "fame-node-cache-record/1"
RECORDS_DIR = "records"
RECORD_SUFFIX = ".record.json"
BuildKey = Mapping[str, Any]


class EngineCache:
    """One cache folder (``runtime.engine_dir()``); created on the first `store`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @property
    def records(self) -> Path:
        return self.folder / RECORDS_DIR

    # -- reading -------------------------------------------------------------------------
    def load(self, name: str, *, source_sha256: str, build_key: BuildKey) -> bytes | None:
        """The verified bytes of cache entry `name`, or None (then rebuild it).

        None without a word when there is neither the entry nor its record (nothing was
        built yet); with a warning naming the entry for anything else."""
        if "/" in name or name in ("", ".", "..", RECORDS_DIR):
            raise ValueError(f"not a cache entry name: {name!r}")
        problem = self._records_problem()
        if problem is None:
            try:
                return self._verified(name, source_sha256, dict(build_key))
            except _Untrusted as exc:
                problem = str(exc)
            except (BundleError, OSError) as exc:  # links, special files, I/O errors
                problem = f"it cannot be read safely ({exc})"
        elif not (self.folder / name).exists():
            return None
        log.warning("engine cache entry %s not used: %s; rebuilding it", name, problem)
        return None

    def _verified(self, name: str, source_sha256: str, build_key: dict[str, Any]) -> bytes | None:
        if not self.folder.is_dir():
            return None
        raw: bytes | None = None
        if self.records.is_dir():
            with open_folder(self.records) as records:
                raw = read_optional(records, name + RECORD_SUFFIX, "engine cache records")
        with open_folder(self.folder) as folder:
            data = read_optional(folder, name, "engine cache")
        if raw is None and data is None:
            return None
        if raw is None:
            raise _Untrusted("this node has no record of building it")
        if data is None:
            raise _Untrusted("its record exists but the file is gone")
        try:
            record = json.loads(raw.decode("utf-8"))
            if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
                raise ValueError(f"expected format {RECORD_FORMAT!r}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise _Untrusted(f"its record is malformed ({exc})") from None
        actual = hashlib.sha256(data).hexdigest()
        if record.get("entry") != name:
            raise _Untrusted(f"its record is for {record.get('entry')!r}")
        if record.get("sha256") != actual:
            recorded = str(record.get("sha256"))[:12]
            raise _Untrusted(
                f"its sha256 {actual[:12]}... differs from the {recorded}... the node recorded "
                "(changed or damaged since it was built)"
            )
        if record.get("source_sha256") != source_sha256:
            raise _Untrusted("it was built from another ONNX than the one in use now")
        if record.get("build_key") != build_key:
            raise _Untrusted(f"it was built for {record.get('build_key')}, not {build_key}")
        return data

    def recorded(self, kind: str, model_sha256: str) -> list[tuple[str, bytes]]:
        """Every entry of build-key `kind` built for the model `model_sha256` whose bytes
        match the node's record (name, bytes); unrecorded or changed entries are left out
        (and logged). For exporting engines elsewhere (Triton), never for this node."""
        if self._records_problem() is not None or not self.records.is_dir():
            return []
        found: list[tuple[str, bytes]] = []
        for record_name in sorted(os.listdir(self.records)):
            if not record_name.endswith(RECORD_SUFFIX):
                continue
            try:
                with open_folder(self.records) as records:
                    raw = read_optional(records, record_name, "engine cache records")
                record = json.loads(raw or b"null")
                key = record["build_key"]
                if key.get("kind") != kind or key.get("model_sha256") != model_sha256:
                    continue
                name = str(record["entry"])
            except (ValueError, TypeError, KeyError, AttributeError, BundleError, OSError):
                continue  # not a record of this node's format
            data = self.load(name, source_sha256=record.get("source_sha256"), build_key=key)
            if data is not None:
                found.append((name, data))
        return found

    def _records_problem(self) -> str | None:
        """Why the records folder cannot be trusted (None: it can, or does not exist)."""
        try:
            info = os.stat(self.records, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return f"the records folder {self.records} cannot be read ({exc.strerror})"
        if not stat.S_ISDIR(info.st_mode):
            return f"{self.records} is not a folder (a link or a file)"
        if info.st_uid != os.geteuid():
            return f"the records folder {self.records} belongs to another user"
        if info.st_mode & 0o022:
            return f"the records folder {self.records} may be written by other users"
        return None

    # -- writing -------------------------------------------------------------------------
    def store(self, name: str, data: bytes, *, source_sha256: str, build_key: BuildKey) -> None:
        """Write entry `name` and then its record, each atomically and durably.

        A cache that cannot be written is logged, not raised: the node runs on the bytes it
        built, and builds them again next time."""
        record = {
            "format": RECORD_FORMAT,
            "entry": name,
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "source_sha256": source_sha256,
            "build_key": dict(build_key),
            "written": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.records.mkdir(mode=0o700, exist_ok=True)
            problem = self._records_problem()
            if problem is not None:
                raise PermissionError(problem)
            _replace(self.folder / name, data)
            _replace(self.records / (name + RECORD_SUFFIX), json.dumps(record).encode())
        except OSError as exc:
            log.warning("engine cache entry %s could not be stored: %s", name, exc)


class _Untrusted(Exception):
    """A cache entry that does not match its record (or has none)."""


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    sync_folder(path.parent)
