"""The node's installed models and which one is active, over the ``model_events`` history.

Installed bundles live in ``<paths.models>/<name>@<version>/``: `install` verifies a bundle
(manifest schema, sha256 of every file, signature against ``models.trusted_keys``), copies
what its manifest lists into a temporary folder there, verifies the copy and renames it
into place, so a half-copied bundle is never seen. A version installed once cannot be
installed again with other contents.

Which model is active is not kept in a file or in the service's memory but in the model
history (`ModelEventStore`, the database the service, the CLI and the GUI share): it is the
model of the newest ``activated`` or ``rolled_back`` event. When there is none yet, the
config's ``models.bundle`` is installed on first use like any other bundle (verified,
copied into ``<paths.models>/<name>@<version>/``) and recorded (``installed`` and
``activated`` by ``install``): the node runs its own verified copy, never the shipped
folder in place. Where that copy cannot be made (the bundle is refused, or the models
folder is not writable by this user) `active` names the shipped folder, unrecorded, so
that loading it reports why. Activations form a stack:
``activated`` pushes, ``rolled_back`` pops, so rolling back twice after activating B then C
goes back to B, then to the first model.

Every bundle is verified *before* its event is recorded; a refused bundle gets a
``refused`` event with the reason and the active model stays. The running service polls
`last_event_id` and loads the new active model itself (`appliance.service`).

Errors: `ModelRegistryError` (nothing to roll back to, unknown model) and the `BundleError`
of a refused bundle (`SignatureError` for signature problems).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from appliance.bundle import MANIFEST_NAME, Bundle, load_bundle
from appliance.closing import Closing
from appliance.config import NodeConfig
from appliance.errors import BundleError, FameNodeError
from appliance.models.install import write_copy
from appliance.models.listing import InstalledModel, list_installed
from appliance.models.node_key import own_trusted_key
from appliance.models.signing import (
    TrustedKey,
    load_trusted_keys,
)
from appliance.store.model_events import ModelAction, ModelEvent, ModelEventStore

log = logging.getLogger("fame_node.models")

INITIAL_ACTOR = "install"
INITIAL_REASON = "the node's initial model (models.bundle)"
SERVICE_ACTOR = "service"
_ACTIVATIONS = ("activated", "rolled_back")
_ALL_HISTORY = 1_000_000


class ModelRegistryError(FameNodeError):
    """A request the registry cannot carry out: unknown model, nothing to roll back to."""


@dataclass(frozen=True)
class ActiveModel:
    """The model the node should run. `event` is None before any activation is recorded
    (the config's ``models.bundle`` is then active)."""

    label: str
    path: Path
    event: ModelEvent | None


class _Entry(NamedTuple):
    label: str
    path: Path | None
    event: ModelEvent


class ModelRegistry(Closing):
    """Install, verify, activate and roll back models; read the history.

    One per process; safe to share between threads (the store serialises writes).
    """

    def __init__(self, config: NodeConfig, events: ModelEventStore | None = None) -> None:
        self.root = config.folder("models")
        self.initial_bundle = config.models.bundle
        self.require_signature = config.models.require_signature
        self.trusted_key_paths = tuple(config.models.trusted_keys)
        self._config = config
        self._owns_events = events is None
        if events is None:
            config.database_path.parent.mkdir(parents=True, exist_ok=True)  # as `run` does
            events = ModelEventStore(config.database_path)
        self.events = events

    def close(self) -> None:
        if self._owns_events:
            self.events.close()

    # -- reading -----------------------------------------------------------------------
    def history(self, limit: int = 200) -> list[ModelEvent]:
        """Model events, newest first."""
        return self.events.history(limit)

    def last_event_id(self) -> int | None:
        """The newest event's id: a cheap check for "did anything change?"."""
        newest = self.events.history(1)
        return newest[0].id if newest else None

    def active(self) -> ActiveModel:
        """The model of the newest activation; before any, the config's ``models.bundle``,
        installed into the registry on this first use (see the module docstring)."""
        stack = self._stack()
        if stack:
            top = stack[-1]
            return ActiveModel(top.label, top.path or self.root / top.label, top.event)
        installed = self._install_initial(INITIAL_ACTOR)
        if installed is not None:
            return installed
        path = self.initial_bundle.resolve()
        return ActiveModel(self._label_of(path), path, None)

    def active_label(self) -> str:
        """``name@version`` of the active model."""
        return self.active().label

    def installed(self) -> list[InstalledModel]:
        """The bundles under the models folder, and the config's ``models.bundle`` while it
        is not installed there; each with what its signature really is."""
        active = self.active()
        try:
            trusted = self.trusted_keys()
        except FameNodeError:
            trusted = []  # `config check` reports the bad key file; nothing is trusted
        return list_installed(self.root, self.initial_bundle.resolve(), active.path, trusted)

    # -- verifying ---------------------------------------------------------------------
    def trusted_keys(self) -> list[TrustedKey]:
        """The keys of ``models.trusted_keys`` and the node's own bundle-signing key
        (`appliance.models.node_key`, once created), read now (`KeyFileError` if bad)."""
        keys = load_trusted_keys(self.trusted_key_paths)
        own = own_trusted_key(self._config)
        return keys if own is None else [*keys, own]

    def load(self, path: Path) -> Bundle:
        """Load and fully verify a bundle under this node's trust policy.

        Raises `BundleError` (`SignatureError`) for the bundle, `KeyFileError` for a
        trusted key file that cannot be read.
        """
        return load_bundle(
            path, trusted_keys=self.trusted_keys(), require_signature=self.require_signature
        )

    def resolve(self, target: str | Path) -> Path:
        """The folder of `target`: a bundle path as is, ``name@version`` looked up."""
        if isinstance(target, Path):
            return target.resolve()
        if (self.root / target).is_dir():
            return (self.root / target).resolve()
        if self._label_of(self.initial_bundle) == target:
            return self.initial_bundle.resolve()
        for entry in self._entries():
            if entry.label == target and entry.path is not None and entry.path.is_dir():
                return entry.path
        known = ", ".join(m.label for m in self.installed()) or "none"
        raise ModelRegistryError(
            f"no model {target!r} is installed (installed: {known}). Install it first with "
            "`fame-node models install PATH`, or give the bundle's folder."
        )

    # -- changing ----------------------------------------------------------------------
    def install(self, source: Path, actor: str, reason: str | None = None) -> Bundle:
        """Verify the bundle at `source` and copy it to ``<models>/<name>@<version>/``.

        Installing a version that is already installed with the same manifest does
        nothing and returns the installed copy.

        Raises
        ------
        BundleError
            the bundle is refused (a ``refused`` event is recorded), or that version is
            installed already with other contents.
        """
        bundle = self._verified_or_refused(source.resolve(), actor)
        return self._install_verified(bundle, actor, reason)

    def activate(self, target: str | Path, actor: str, reason: str | None = None) -> ModelEvent:
        """Make `target` (``name@version`` or a bundle folder) the active model.

        A folder outside the models folder is installed first. The bundle is verified
        before anything is recorded; activating the active model again records nothing
        and returns its activation event.

        Raises
        ------
        BundleError
            the bundle is refused: a ``refused`` event is recorded, the active model stays.
        ModelRegistryError
            no such model is installed.
        """
        self.ensure_initial()
        path = self.resolve(target)
        bundle = self._verified_or_refused(path, actor)
        if path != (self.root / bundle.version_label).resolve():
            bundle = self._install_verified(bundle, actor, reason)
        current = self.active()
        if current.event is not None and (current.label, current.path) == (
            bundle.version_label,
            bundle.path.resolve(),
        ):
            return current.event
        event = self._record(bundle, "activated", actor, reason)
        log.info("model %s activated by %s", bundle.version_label, actor)
        return event

    def rollback(self, actor: str, reason: str) -> ModelEvent:
        """Re-activate the model that was active before the current one.

        Raises
        ------
        ModelRegistryError
            there is no earlier model in the history.
        BundleError
            the earlier model no longer verifies (a ``refused`` event is recorded).
        """
        stack = self._stack()
        if len(stack) < 2:
            now = stack[-1].label if stack else self.active_label()
            raise ModelRegistryError(
                f"nothing to roll back to: no model was active before {now} (or earlier "
                "rollbacks went back past it already). Activate a model by name with "
                "`fame-node models activate NAME@VERSION` (`fame-node models list` shows them)."
            )
        previous = stack[-2]
        path = previous.path or self.root / previous.label
        try:
            bundle = self.load(path)
        except BundleError as exc:
            self.events.record(previous.label, "refused", actor, reason=str(exc), bundle_path=path)
            raise BundleError(
                f"cannot roll back to {previous.label}: {exc} The active model stays "
                f"{stack[-1].label}."
            ) from exc
        event = self._record(bundle, "rolled_back", actor, reason or None)
        log.info("model rolled back to %s by %s", bundle.version_label, actor)
        return event

    def ensure_initial(self, actor: str = INITIAL_ACTOR) -> ActiveModel:
        """Install and activate the config's bundle when no model is active yet."""
        stack = self._stack()
        if stack:
            return self.active()
        return self._install_initial(actor) or self.active()

    def _install_initial(self, actor: str) -> ActiveModel | None:
        """Copy ``models.bundle`` into the registry (verified) and record it active.

        None when it cannot be done: the refusal is not recorded (nothing was offered by
        anyone; the caller loading the shipped folder reports the reason)."""
        try:
            bundle = self.load(self.initial_bundle.resolve())
            installed = self._install_verified(bundle, actor, INITIAL_REASON, record=False)
        except FameNodeError as exc:
            log.warning("the initial model (models.bundle) cannot be installed: %s", exc)
            return None
        if self._stack():
            return self.active()  # another process recorded it meanwhile
        self._record(installed, "installed", actor, INITIAL_REASON)
        event = self._record(installed, "activated", actor, INITIAL_REASON)
        log.info("initial model %s installed in %s", installed.version_label, installed.path)
        return ActiveModel(installed.version_label, installed.path.resolve(), event)

    def refuse_loading(self, model: ActiveModel, reason: str, running: Bundle) -> None:
        """The service could not load the active `model`: record it refused and go back
        to `running`, unless someone activated something else meanwhile."""
        if model.event is None or self.last_activation_id() != model.event.id:
            return
        self.events.record(
            model.label, "refused", SERVICE_ACTOR, reason=reason, bundle_path=model.path
        )
        self._record(
            running,
            "rolled_back",
            SERVICE_ACTOR,
            f"{model.label} could not be loaded by the service; kept {running.version_label}",
        )

    def last_activation_id(self) -> int | None:
        stack = self._stack()
        return stack[-1].event.id if stack else None

    # -- internals ---------------------------------------------------------------------
    def _record(
        self, bundle: Bundle, action: ModelAction, actor: str, reason: str | None
    ) -> ModelEvent:
        return self.events.record(
            bundle.version_label,
            action,
            actor,
            reason=reason,
            bundle_path=bundle.path.resolve(),
            figures=dict(bundle.manifest.evaluation),
        )

    def _verified_or_refused(self, path: Path, actor: str) -> Bundle:
        try:
            return self.load(path)
        except BundleError as exc:
            self.events.record(self._label_of(path), "refused", actor, reason=str(exc))
            log.warning("model bundle %s refused: %s", path, exc)
            raise

    def _install_verified(
        self, bundle: Bundle, actor: str, reason: str | None, *, record: bool = True
    ) -> Bundle:
        """Write the *verified bytes* of `bundle` (never its files re-read by path) into
        ``<models>/<name>@<version>/``, verify the copy, and record it installed."""
        self.root.mkdir(parents=True, exist_ok=True)
        dest = self.root / bundle.version_label
        if bundle.path.resolve() == dest.resolve():
            return bundle
        if dest.exists():
            return self._reuse_installed(bundle, dest, actor)
        try:
            if not write_copy(bundle, dest, self.load):
                return self._reuse_installed(bundle, dest, actor)  # another process won
        except OSError as exc:
            raise BundleError(
                f"cannot install {bundle.version_label} into {self.root}: {exc}. Check that "
                "the models folder is writable and has space."
            ) from exc
        installed = self.load(dest)
        if record:
            self._record(installed, "installed", actor, reason)
        log.info("model %s installed in %s by %s", installed.version_label, dest, actor)
        return installed

    def _reuse_installed(self, bundle: Bundle, dest: Path, actor: str) -> Bundle:
        new = bundle.manifest_bytes
        try:
            old = (dest / MANIFEST_NAME).read_bytes()
        except OSError:
            old = b""
        if new != old:
            message = (
                f"{bundle.version_label} is already installed in {dest} with different "
                "contents (another manifest.json). A changed model needs a new version; "
                "remove the installed folder only if you are sure it is not in use."
            )
            self.events.record(bundle.version_label, "refused", actor, reason=message)
            raise BundleError(message)
        return self._verified_or_refused(dest, actor)

    def _entries(self) -> list[_Entry]:
        """Activation events, oldest first."""
        events = self.events.history(_ALL_HISTORY)
        return [
            _Entry(e.model, e.bundle_path, e) for e in reversed(events) if e.action in _ACTIVATIONS
        ]

    def _stack(self) -> list[_Entry]:
        """Activated models in turn, oldest first; the last is active. The GUI's models
        panel (`appliance.app.models_panel.activation_stack`) follows the same rules."""
        stack: list[_Entry] = []
        for entry in self._entries():
            if entry.event.action == "rolled_back" and stack:
                stack.pop()
            if stack and stack[-1].label == entry.label:
                stack[-1] = entry  # the same model again: the newest event names it
            else:
                stack.append(entry)
        return stack

    @staticmethod
    def _label_of(path: Path) -> str:
        """``name@version`` from the manifest (unverified: for naming only)."""
        try:
            return load_bundle(path, verify=False).version_label
        except BundleError:
            return path.name
