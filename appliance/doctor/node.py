"""The node's own checks: Python and packages, config, folders, store, service, model,
backend, decoding sandbox, engine cache.

The checks look, they do not repair: the only things they create are the folders
``fame-node run`` would create, the initial model's copy in the registry (as ``run``
would) and a probe file removed at once. One decoder process is started and stopped to
prove that inputs can be decoded under this installation.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sqlite3
import stat
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image

from appliance.config import NodeConfig, check_config
from appliance.doctor.findings import Finding, Level
from appliance.errors import FameNodeError, InputError
from appliance.nodelock import lock_path, read_holder

# Free space below these: warn / fail (bytes). One BUSI image and its results take about
# 0.5 MB; a cine can take far more.
WARN_FREE_BYTES = 2 << 30
FAIL_FREE_BYTES = 200 << 20

# Packages the node needs, and the decoders it uses where present.
REQUIRED = (
    "numpy",
    "PIL",
    "cv2",
    "pydicom",
    "onnxruntime",
    "watchdog",
    "pydantic",
    "cryptography",
    "pydantic_settings",
    "highdicom",
    "pynetdicom",
    "prometheus_client",
)
DECODERS = {
    "pylibjpeg": "JPEG baseline DICOM (with openjpeg: JPEG 2000)",
    "openjpeg": "JPEG 2000 DICOM",
    "gdcm": "JPEG lossless DICOM",
}


def check_python(config: NodeConfig) -> Iterator[Finding]:
    version = ".".join(map(str, sys.version_info[:3]))
    yield Finding("python", "ok", f"Python {version} ({sys.executable})")
    for name in REQUIRED:
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            yield Finding(
                "packages",
                "fail",
                f"{name} cannot be imported ({exc})",
                "reinstall the node (pip install -e . or packaging/install.sh)",
            )
            continue
        yield Finding("packages", "ok", f"{name} {getattr(module, '__version__', '?')}")
    for name, what in DECODERS.items():
        try:
            importlib.import_module(name)
        except Exception:
            yield Finding(
                "decoders",
                "warn",
                f"{name} is not installed: {what} is rejected",
                f"pip install {_dist_of(name)}",
            )
        else:
            yield Finding("decoders", "ok", f"{name}: {what}")


def check_config_values(config: NodeConfig) -> Iterator[Finding]:
    problems = check_config(config)
    for line in problems:
        yield Finding(
            "config", "fail", line, "correct it in the config file, then run doctor again"
        )
    if not problems:
        yield Finding("config", "ok", "valid; folders creatable; the active model verifies")


def check_folders(config: NodeConfig) -> Iterator[Finding]:
    for name in ("inbox", "work", "results", "quarantine", "outbox", "models"):
        folder = config.folder(name)
        if not folder.is_dir():
            continue  # check_config_values reported it
        mode = folder.stat().st_mode
        if name != "inbox" and mode & stat.S_IRWXO:
            yield Finding(
                "folders",
                "warn",
                f"{name} ({folder}) is open to other users (mode {stat.filemode(mode)}): it "
                "holds patient data",
                f"chmod o-rwx {folder} (packaging/data-dirs.sh sets every data folder 2750)",
            )
        if name != "inbox" and not _can_create(folder):
            yield Finding(
                "folders",
                "fail",
                f"cannot create a file in {name} ({folder})",
                "give the node's user write access to it",
            )
    for name in ("work", "results"):
        folder = config.folder(name)
        if not folder.is_dir():
            continue
        free = shutil.disk_usage(folder).free
        level: Level = (
            "fail" if free < FAIL_FREE_BYTES else "warn" if free < WARN_FREE_BYTES else "ok"
        )
        fix = "" if level == "ok" else f"free space on the disk of {folder}"
        yield Finding("disk", level, f"{name}: {free / 2**30:.1f} GiB free ({folder})", fix)
    database = config.database_path
    if database.exists() and database.stat().st_mode & stat.S_IRWXO:
        yield Finding(
            "folders",
            "warn",
            f"the database {database} is readable by other users",
            f"chmod o-rwx {database}*",
        )


def check_store(config: NodeConfig) -> Iterator[Finding]:
    from appliance.store.jobs import JobQueue
    from appliance.store.schema import SCHEMA_VERSION

    database = config.database_path
    if not database.exists():
        yield Finding("store", "ok", f"no database yet ({database}): `fame-node run` creates it")
        return
    try:
        queue = JobQueue(database)
    except FameNodeError as exc:
        yield Finding("store", "fail", str(exc), "see the message; the file was left unchanged")
        return
    with queue:
        counts = queue.counts()
        waiting = queue.waiting()
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        result = conn.execute("PRAGMA quick_check").fetchone()[0]
    finally:
        conn.close()
    if result != "ok":
        yield Finding(
            "store",
            "fail",
            f"{database} fails SQLite's integrity check ({result})",
            "stop the node, move the file aside, restore it from a backup",
        )
    else:
        total = sum(counts.values())
        yield Finding("store", "ok", f"schema {SCHEMA_VERSION}, integrity ok, {total} job(s)")
    if counts.get("failed"):
        yield Finding(
            "store",
            "warn",
            f"{counts['failed']} job(s) failed and set aside",
            "read why with `fame-node jobs list --status failed`, then "
            "`fame-node jobs retry --all`",
        )
    for condition, n in waiting.items():
        yield Finding(
            "store",
            "warn",
            f"{n} queued job(s) wait for {condition}",
            "they resume by themselves once it clears",
        )


def check_service(config: NodeConfig) -> Iterator[Finding]:
    from appliance.service_status import read_service_status

    status = read_service_status(config)
    holder = read_holder(lock_path(config.database_path))
    if status is not None and status.get("alive"):
        yield Finding("service", "ok", f"running, pid {status['pid']}, model {status['model']}")
        for w in status.get("waiting_for") or []:
            yield Finding(
                "service",
                "warn",
                f"{w['scope']} waits for {w['condition']} since {w['since']}",
                "it resumes by itself once that clears",
            )
    elif holder:
        yield Finding(
            "service",
            "warn",
            f"the store's lock names pid {holder.get('pid')} on {holder.get('host')}, "
            "but no live service reports",
            "check that process; a dead one's lock is released by the kernel",
        )
    else:
        yield Finding("service", "ok", "not running (`fame-node run` or systemctl start)")


def check_model(config: NodeConfig) -> Iterator[Finding]:
    from appliance.models.registry import ModelRegistry

    with ModelRegistry(config) as registry:
        active = registry.active()
        try:
            bundle = registry.load(active.path)
        except FameNodeError as exc:
            yield Finding(
                "model",
                "fail",
                f"{active.label}: {exc}",
                "activate another model or roll back (`fame-node models`)",
            )
            return
        signed = next(
            (m.signature for m in registry.installed() if m.path == active.path), "unsigned"
        )
    yield Finding("model", "ok", f"{bundle.version_label}: every file verified; {signed}")
    if not config.models.require_signature:
        yield Finding(
            "model",
            "warn",
            "models.require_signature is off: unsigned bundles are accepted",
            "once the node joins a federation, trust its key and set "
            "models.require_signature = true",
        )


def check_decoder(config: NodeConfig) -> Iterator[Finding]:
    from appliance.io.sandbox import Decoder
    from appliance.service import read_limits

    p = config.processing
    probe = config.folder("work") / ".doctor-probe.png"
    gradient = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    Image.fromarray(gradient).save(probe)
    try:
        with Decoder(
            1, read_limits(config), timeout_s=p.decode_timeout_s, memory_mb=p.decode_memory_mb
        ) as decoder:
            loaded = decoder.decode(probe, claimed_suffix=".png")
    except (InputError, FameNodeError, RuntimeError) as exc:
        yield Finding(
            "decoder",
            "fail",
            f"the decoding sandbox does not work here: {exc}",
            f"check that {sys.executable} can run `-m appliance.io.sandbox_child` "
            f"and that {p.decode_memory_mb} MiB of address space is allowed",
        )
        return
    finally:
        probe.unlink(missing_ok=True)
    ok = loaded.frames[0].shape == (64, 64)
    yield Finding(
        "decoder",
        "ok" if ok else "fail",
        f"a child process decoded a probe image within {p.decode_timeout_s:g} s and "
        f"{p.decode_memory_mb} MiB"
        if ok
        else "the probe came back wrong",
    )


def check_engine_cache(config: NodeConfig) -> Iterator[Finding]:
    cache = config.runtime.engine_dir()
    records = cache / "records"
    if not cache.exists():
        yield Finding(
            "engines", "ok", f"no engine cache yet ({cache}); built on first use on a GPU"
        )
        return
    if records.exists():
        st = os.lstat(records)
        if stat.S_ISLNK(st.st_mode) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            yield Finding(
                "engines",
                "warn",
                f"{records} is a link or writable by others: cached engines are not "
                "trusted and get rebuilt",
                f"chmod 0700 {records}",
            )
            return
    yield Finding("engines", "ok", f"engine cache {cache}")


def _can_create(folder: Path) -> bool:
    probe = folder / f".doctor-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError:
        return False
    return True


def _dist_of(module: str) -> str:
    names = {"pylibjpeg": "pylibjpeg", "openjpeg": "pylibjpeg-openjpeg", "gdcm": "python-gdcm"}
    name = names.get(module, module)
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return f"'{name}'"
    return name
