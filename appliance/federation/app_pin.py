"""The node runs only its own installed ClientApp code: an app bundle that brings other code
is refused before any of it is installed or imported (issue 9).

What Flower 1.42 does with the app bundle (FAB) a coordinator sends (read from the
installed package): the SuperNode fetches the FAB of each new run from the SuperLink
(``start_client_internal._pull_and_store_message``) and hands it to a ``flwr-clientapp``
process that its SuperExec starts, by name from ``PATH``, for every message; that process
(``flwr.supernode.runtime.run_clientapp``) pulls the FAB, unpacks it into
``$FLWR_HOME/apps`` (``install_from_fab``, which checks the FAB's own ``.info/CONTENT``
list, i.e. only that the zip is self-consistent) and imports the module its
``pyproject.toml`` names: whatever Python the coordinator put there runs on the node.
``flower-supernode --trusted-entities`` is no answer here: it accepts only FABs whose
SuperLink attached a Flower Hub licence record (``verifications["valid_license"]``, set
only for apps fetched from the Hub, `_format_verification`), so with a FAB sent by
``flwr run`` to the federation's own SuperLink every run, ours too, is refused.

So the node pins the content of its own app bundle instead:

* `installed_content` builds the FAB of the installed shim (``trainer/federated/app/``)
  with Flower's own builder (``flwr.cli.build.build_fab_from_disk``, what ``flwr run``
  sends) and records the sha256 of every member; the supervisor writes it (`write_pin`)
  to ``work/federation/app-pin.json`` when ``fame-node run`` starts, computed from the
  installed files, never from anything the coordinator sent. Members are compared
  unpacked, so a coordinator whose zlib compresses differently still matches.
* The supervisor puts ``work/federation/bin`` first on the SuperNode's ``PATH``
  (`install_shadow_commands`): its ``flwr-clientapp`` is `clientapp_main`, which runs
  Flower's own ``flwr-clientapp`` with one change: before the FAB is unpacked it must
  match the pin member for member (`check_fab`). A FAB that differs raises
  `ForeignAppError`: nothing of it is written to disk or imported; the ClientApp replies
  with an error naming the reason, the node log gets the reason (the process's output is
  relayed by the supervisor) and the audit log a ``federation_app_refused`` row (run, the
  FAB's sha256, both digests, the members added / changed / missing). Every other task
  program the SuperExec could start for a run (``flwr-agentapp``, ``flwr-serverapp``,
  ...) is shadowed by a script that refuses, so a run cannot pick another kind of app.
* No pin file, or an unreadable one: every FAB is refused (fail closed).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trainer.federated
from appliance.federation import FederationError

PIN_FILE = Path("federation") / "app-pin.json"  # under paths.work
SHADOW_DIR = Path("federation") / "bin"  # under paths.work, first on the SuperNode's PATH
PIN_ENV = "FAME_NODE_APP_PIN"
APP_DIR = Path(trainer.federated.__file__).resolve().parent / "app"
REFUSED = "federation_app_refused"  # the audit action
# Task programs Flower 1.42's SuperExec may start (flwr.supercore.constant
# TASK_TYPE_TO_COMMAND); on a node only the ClientApp may run.
OTHER_TASK_PROGRAMS = (
    "flwr-agentapp",
    "flwr-connector",
    "flwr-model",
    "flwr-serverapp",
    "flwr-simulation",
)
MAX_FAB_BYTES = 10_000_000  # Flower's own FAB_MAX_SIZE
MAX_MEMBERS = 1_000
MAX_UNPACKED_BYTES = 50_000_000  # a zip bomb is refused before it is inflated


class ForeignAppError(FederationError):
    """The app bundle is not the node's installed ClientApp; `differences` says how."""

    def __init__(self, message: str, differences: Mapping[str, list[str]]) -> None:
        super().__init__(message)
        self.differences = {k: list(v) for k, v in differences.items()}


@dataclass(frozen=True)
class AppContent:
    """An app bundle's members (zip names) and the sha256 of each, unpacked."""

    files: Mapping[str, str]

    @property
    def digest(self) -> str:
        """sha256 over the sorted ``name,sha256`` lines: the bundle's content in one value."""
        lines = "\n".join(f"{name},{self.files[name]}" for name in sorted(self.files))
        return hashlib.sha256(lines.encode("utf-8")).hexdigest()

    def differences(self, received: AppContent) -> dict[str, list[str]]:
        """What `received` adds, changes and misses against this (the pinned) content."""
        mine, theirs = set(self.files), set(received.files)
        return {
            "added": sorted(theirs - mine),
            "changed": sorted(n for n in mine & theirs if self.files[n] != received.files[n]),
            "missing": sorted(mine - theirs),
        }

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "files": dict(sorted(self.files.items()))}


def fab_content(fab: bytes) -> AppContent:
    """The members of a FAB, read without unpacking it to disk or running anything.

    Raises:
        ForeignAppError: not a zip, too big, too many members, or unpacking past the bounds.
    """
    if len(fab) > MAX_FAB_BYTES:
        raise ForeignAppError(
            f"the app bundle is {len(fab)} bytes, more than Flower's {MAX_FAB_BYTES}", {}
        )
    try:
        with zipfile.ZipFile(io.BytesIO(fab)) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            if len(infos) > MAX_MEMBERS:
                raise ForeignAppError(f"the app bundle has {len(infos)} members", {})
            if sum(i.file_size for i in infos) > MAX_UNPACKED_BYTES:
                raise ForeignAppError(
                    f"the app bundle unpacks to more than {MAX_UNPACKED_BYTES} bytes", {}
                )
            files = {i.filename: hashlib.sha256(zf.read(i)).hexdigest() for i in infos}
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ForeignAppError(f"the app bundle is not a readable zip: {exc}", {}) from exc
    return AppContent(files)


def installed_content(app_dir: Path = APP_DIR) -> AppContent:
    """The content of the FAB that ``flwr run`` builds from the installed app folder.

    Raises:
        FederationError: the installed app folder is missing or Flower cannot build it.
    """
    from flwr.cli.build import build_fab_from_disk  # only where the federation runs

    if not (app_dir / "pyproject.toml").is_file():
        raise FederationError(
            f"the installed ClientApp bundle {app_dir} has no pyproject.toml: reinstall "
            "fame-node (its trainer/federated/app folder is part of the package)"
        )
    try:
        return fab_content(build_fab_from_disk(app_dir))
    except ValueError as exc:
        raise FederationError(f"Flower cannot build the installed app {app_dir}: {exc}") from exc


def check_fab(fab: bytes, pinned: AppContent) -> AppContent:
    """`fab`'s content when it equals `pinned` member for member; else `ForeignAppError`."""
    received = fab_content(fab)
    if received.files == pinned.files:
        return received
    diff = pinned.differences(received)
    said = "; ".join(f"{k} {', '.join(v)}" for k, v in diff.items() if v)
    raise ForeignAppError(
        f"the app bundle (sha256 {hashlib.sha256(fab).hexdigest()[:16]}, content digest "
        f"{received.digest[:16]}) is not this node's installed ClientApp (pinned digest "
        f"{pinned.digest[:16]}): {said}. Refused before any of its code was installed or "
        "imported; the coordinator must run the fame-node version this node has installed",
        diff,
    )


def write_pin(path: Path, content: AppContent) -> None:
    """Write the pin atomically (read by every ``flwr-clientapp`` the SuperNode starts)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(content.to_json(), indent=1), encoding="utf-8")
    os.replace(tmp, path)


def read_pin(path: Path) -> AppContent:
    """The pinned content. Raises FederationError when the file is missing or malformed."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = data["files"]
        if not isinstance(files, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in files.items()
        ):
            raise ValueError("files is not a mapping of names to digests")
        content = AppContent(files)
        if content.digest != data["digest"]:
            raise ValueError("its digest does not match its files")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FederationError(
            f"the ClientApp pin {path} cannot be read ({exc}): every app bundle is refused "
            "until `fame-node run` writes it again"
        ) from exc
    return content


def install_shadow_commands(folder: Path, python: str = sys.executable) -> None:
    """Write the task programs the SuperNode's SuperExec finds first on its PATH."""
    folder.mkdir(parents=True, exist_ok=True)
    scripts = {
        "flwr-clientapp": (
            f"#!{python}\n"
            '"""flwr-clientapp, checked against the node\'s pinned app (app_pin)."""\n'
            "from appliance.federation.app_pin import clientapp_main\n\n"
            "clientapp_main()\n"
        )
    }
    for program in OTHER_TASK_PROGRAMS:
        scripts[program] = (
            "#!/bin/sh\n"
            f'echo "fame-node: refused to start {program}: a node runs only its installed '
            'ClientApp (appliance.federation.app_pin)" >&2\n'
            "exit 1\n"
        )
    for name, text in scripts.items():
        target = folder / name
        tmp = folder / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP)
        os.replace(tmp, target)


def record_refusal(config_path: Path, run_id: int | None, fab: bytes, exc: ForeignAppError) -> None:
    """The refusal in the node's audit log (``federation_app_refused``)."""
    from appliance.config import load_config
    from appliance.store.audit import append
    from appliance.store.db import Database

    config = load_config(config_path)
    detail: dict[str, Any] = {
        "fab_sha256": hashlib.sha256(fab).hexdigest(),
        "received_digest": _digest_or_none(fab),
        "pinned_digest": read_pin(config.folder("work") / PIN_FILE).digest,
        **{k: v[:20] for k, v in exc.differences.items()},
    }
    db = Database(config.database_path)
    try:
        with db.write() as conn:
            subject = None if run_id is None else f"run:{run_id}"
            append(conn, "node", REFUSED, subject, detail)
    finally:
        db.close()


def _digest_or_none(fab: bytes) -> str | None:
    try:
        return fab_content(fab).digest
    except ForeignAppError:
        return None


def clientapp_main() -> None:
    """Flower's ``flwr-clientapp``, with the FAB checked against the pin before it is
    unpacked (the SuperNode starts this for every message, through the shadow PATH)."""
    import flwr.supernode.runtime.run_clientapp as runtime
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    pin_path = os.environ.get(PIN_ENV)
    original = getattr(runtime, "install_from_fab", None)
    if original is None:
        sys.exit(
            "fame-node: this Flower has no run_clientapp.install_from_fab to guard (the pin is "
            "written for flwr 1.42): refusing to run any ClientApp"
        )

    def guarded(fab_file: object, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(fab_file, bytes):
            raise ForeignAppError("the ClientApp was handed a FAB that is not bytes", {})
        if not pin_path:
            raise FederationError(f"{PIN_ENV} is not set: no pinned ClientApp, refused")
        try:
            check_fab(fab_file, read_pin(Path(pin_path)))
        except ForeignAppError as exc:
            run_id: int | None = getattr(TaskIdentity, "_run_id", None)
            print(
                f"fame-node: REFUSED app bundle of run {run_id}: {exc}", file=sys.stderr, flush=True
            )
            config = os.environ.get("FAME_NODE_CONFIG")
            if config:
                try:
                    record_refusal(Path(config), run_id, fab_file, exc)
                except Exception as audit_exc:  # the refusal stands even unaudited
                    print(
                        f"fame-node: the refusal could not be audited: {audit_exc}",
                        file=sys.stderr,
                        flush=True,
                    )
            raise
        return original(fab_file, *args, **kwargs)

    runtime.install_from_fab = guarded
    flwr_clientapp()


__all__ = [
    "APP_DIR",
    "PIN_ENV",
    "PIN_FILE",
    "REFUSED",
    "SHADOW_DIR",
    "AppContent",
    "ForeignAppError",
    "check_fab",
    "clientapp_main",
    "fab_content",
    "install_shadow_commands",
    "installed_content",
    "read_pin",
    "write_pin",
]
