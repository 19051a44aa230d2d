"""``fame-node models``: list, verify, install, activate, roll back, sign, keygen.

The node side (list / verify / install / activate / rollback) works on this node's
registry and model history (`appliance.models.registry`); ``activate`` and ``rollback``
then wait until a running service has switched to the model (``--no-wait`` to skip).
The federation coordinator's side (``keygen``, ``sign``) writes ed25519 keys and
``manifest.sig`` (`appliance.models.signing`).

Exit codes: 0 done; 1 refused or failed (the message says why and what to do).
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from appliance.bundle import load_bundle
from appliance.config import NodeConfig
from appliance.errors import BundleError, FameNodeError
from appliance.models.registry import ModelRegistry
from appliance.models.signing import (
    SIGNATURE_NAME,
    SignatureError,
    fingerprint,
    generate_keypair,
    load_private_key,
    sign_manifest,
)
from appliance.store.model_events import ModelEvent

WAIT_POLL_S = 0.2


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "models", help="list, verify, install, activate, roll back and sign model bundles"
    )
    sub = p.add_subparsers(dest="models_action", required=True, metavar="ACTION")

    ls = sub.add_parser("list", help="installed models, the active one, and the history")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--limit", type=int, default=20, help="history events shown (default 20)")
    ls.set_defaults(handler=_list)

    vf = sub.add_parser("verify", help="check a bundle's checksums and signature; change nothing")
    vf.add_argument("target", help="a bundle folder or an installed NAME@VERSION")
    vf.add_argument("--json", action="store_true")
    vf.set_defaults(handler=_verify)

    ins = sub.add_parser("install", help="verify a bundle and copy it into the models folder")
    ins.add_argument("path", type=Path)
    _who(ins)
    ins.set_defaults(handler=_install)

    act = sub.add_parser("activate", help="make a model active (the service switches live)")
    act.add_argument("target", help="an installed NAME@VERSION, or a bundle folder to install")
    _who(act)
    _waiting(act)
    act.set_defaults(handler=_activate)

    rb = sub.add_parser("rollback", help="re-activate the model that was active before")
    _who(rb)
    _waiting(rb)
    rb.set_defaults(handler=_rollback)

    sg = sub.add_parser("sign", help="(coordinator) sign a bundle's manifest with a private key")
    sg.add_argument("--key", type=Path, required=True, help="ed25519 private key (PEM)")
    sg.add_argument("bundle", type=Path)
    sg.set_defaults(handler=_sign)

    kg = sub.add_parser("keygen", help="(coordinator) new key pair: PREFIX.key and PREFIX.pub")
    kg.add_argument("--out", type=Path, required=True, metavar="PREFIX")
    kg.set_defaults(handler=_keygen)


def _who(p: argparse.ArgumentParser) -> None:
    p.add_argument("--actor", default=_os_user(), help="who does this (default: the OS user)")
    p.add_argument("--reason", default=None, help="why; kept in the model history")
    p.add_argument("--json", action="store_true")


def _waiting(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-wait", action="store_true", help="do not wait for a running service to switch"
    )
    p.add_argument("--wait-s", type=float, default=120.0, help="how long to wait (default 120)")


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the uid (containers)
        return "unknown"


def _registry(config: NodeConfig) -> ModelRegistry:
    # The CLI prints its own outcome; the registry's info lines would repeat it.
    logging.getLogger("fame_node.models").setLevel(logging.WARNING)
    return ModelRegistry(config)


def _target(text: str) -> str | Path:
    path = Path(text)
    return path if path.is_dir() or "/" in text or "@" not in text else text


def _event_dict(e: ModelEvent) -> dict[str, Any]:
    d = asdict(e)
    d["at"] = e.at.isoformat()
    d["bundle_path"] = None if e.bundle_path is None else str(e.bundle_path)
    return d


def _refused(registry: ModelRegistry, exc: FameNodeError, as_json: bool) -> int:
    active = registry.active_label()
    if as_json:
        print(json.dumps({"ok": False, "error": str(exc), "active": active}))
    print(f"fame-node: refused: {exc}", file=sys.stderr)
    print(f"fame-node: the active model stays {active}", file=sys.stderr)
    return 1


# -- node side -----------------------------------------------------------------------------
def _list(config: NodeConfig, args: argparse.Namespace) -> int:
    registry = _registry(config)
    try:
        active = registry.active()
        installed = registry.installed()
        history = registry.history(args.limit)
    finally:
        registry.close()
    if args.json:
        doc = {
            "active": {"model": active.label, "path": str(active.path)},
            "installed": [{**asdict(m), "path": str(m.path)} for m in installed],
            "history": [_event_dict(e) for e in history],
        }
        print(json.dumps(doc, indent=2))
        return 0
    since = (
        f", since {active.event.at:%Y-%m-%d %H:%M:%S} UTC by {active.event.actor}"
        if active.event
        else " (models.bundle; no activation recorded yet)"
    )
    print(f"active     {active.label}  {active.path}{since}")
    print("installed")
    for m in installed:
        mark = "*" if m.active else " "
        print(f"  {mark} {m.label:<32} {m.path}  {m.signature}")
    print("history (newest first)")
    for e in history:
        why = f"  {e.reason}" if e.reason else ""
        print(f"  {e.at:%Y-%m-%d %H:%M:%S}  {e.action:<11} {e.model:<32} {e.actor}{why}")
    return 0


def _verify(config: NodeConfig, args: argparse.Namespace) -> int:
    registry = _registry(config)
    try:
        path = registry.resolve(_target(args.target))
        try:
            bundle = registry.load(path)
        except BundleError as exc:
            if args.json:
                print(json.dumps({"ok": False, "path": str(path), "error": str(exc)}))
            print(f"fame-node: refused: {exc}", file=sys.stderr)
            return 1
    finally:
        registry.close()
    sig = bundle.signature
    if sig is None:
        signed = "unsigned (accepted: models.require_signature = false)"
    else:
        trust = "a trusted key" if sig.trusted else "a key this node does not trust (accepted)"
        signed = f"signed by {trust}, {sig.fingerprint}"
    if args.json:
        print(
            json.dumps(
                {
                    "ok": True,
                    "model": bundle.version_label,
                    "path": str(path),
                    "files": len(bundle.manifest.files),
                    "signer": None if sig is None else sig.fingerprint,
                    "trusted": None if sig is None else sig.trusted,
                }
            )
        )
    else:
        print(
            f"OK {bundle.version_label} at {path}: manifest valid, "
            f"{len(bundle.manifest.files)} file checksum(s) match, {signed}"
        )
    return 0


def _install(config: NodeConfig, args: argparse.Namespace) -> int:
    registry = _registry(config)
    try:
        try:
            bundle = registry.install(args.path, args.actor, args.reason)
        except BundleError as exc:
            return _refused(registry, exc, args.json)
    finally:
        registry.close()
    if args.json:
        print(json.dumps({"ok": True, "model": bundle.version_label, "path": str(bundle.path)}))
    else:
        print(f"installed {bundle.version_label} in {bundle.path}")
    return 0


def _activate(config: NodeConfig, args: argparse.Namespace) -> int:
    registry = _registry(config)
    try:
        before = registry.last_event_id() or 0
        try:
            event = registry.activate(_target(args.target), args.actor, args.reason)
        except BundleError as exc:
            return _refused(registry, exc, args.json)
        already = event.id <= before
        return _after_change(config, registry, event, args, already=already)
    finally:
        registry.close()


def _rollback(config: NodeConfig, args: argparse.Namespace) -> int:
    registry = _registry(config)
    try:
        try:
            event = registry.rollback(args.actor, args.reason or "")
        except BundleError as exc:
            return _refused(registry, exc, args.json)
        return _after_change(config, registry, event, args, already=False)
    finally:
        registry.close()


def _after_change(
    config: NodeConfig,
    registry: ModelRegistry,
    event: ModelEvent,
    args: argparse.Namespace,
    *,
    already: bool,
) -> int:
    verb = "is already active" if already else event.action.replace("_", " ")
    service = "not waited for" if args.no_wait else _wait_for_service(config, registry, event, args)
    ok = not service.startswith("refused")
    if args.json:
        print(json.dumps({"ok": ok, "event": _event_dict(event), "service": service}))
    else:
        print(f"{event.model} {verb} (by {event.actor})")
        print(f"service: {service}")
    return 0 if ok else 1


def _wait_for_service(
    config: NodeConfig, registry: ModelRegistry, event: ModelEvent, args: argparse.Namespace
) -> str:
    """Until the running service runs `event`'s model; says what happened."""
    from appliance.service_status import read_service_status

    status = read_service_status(config)
    if status is None or not status["alive"]:
        return "not running; it will start on this model"
    deadline = time.monotonic() + args.wait_s
    while time.monotonic() < deadline:
        status = read_service_status(config) or {}
        if status.get("model") == event.model and status.get("model_path") == str(
            event.bundle_path
        ):
            return f"switched to {event.model} at {status.get('model_since')}"
        for later in registry.history(20):
            if later.id > event.id and later.action == "refused" and later.model == event.model:
                return f"refused: the service could not load it: {later.reason}"
        time.sleep(WAIT_POLL_S)
    return f"still switching after {args.wait_s:.0f} s (see the service log)"


# -- coordinator side ----------------------------------------------------------------------
def _sign(config: NodeConfig, args: argparse.Namespace) -> int:
    key = load_private_key(args.key)
    try:
        bundle = load_bundle(args.bundle)
    except SignatureError:
        bundle = load_bundle(args.bundle, verify=False)  # checksums passed; re-signing it
    manifest_bytes = bundle.manifest_bytes  # the bytes whose checksums were just checked
    target = args.bundle / SIGNATURE_NAME
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(sign_manifest(manifest_bytes, key))
    tmp.replace(target)
    print(
        f"signed {bundle.version_label}: {target} (key {fingerprint(key.public_key())}). "
        "Nodes that trust this key's .pub file accept the bundle."
    )
    return 0


def _keygen(config: NodeConfig, args: argparse.Namespace) -> int:
    private_path, public_path = generate_keypair(args.out)
    fp = fingerprint(load_private_key(private_path).public_key())
    print(f"private key {private_path} (keep it offline, never commit it)")
    print(f"public key  {public_path} (give it to every node: models.trusted_keys)")
    print(f"fingerprint {fp}")
    return 0
