"""Model management: the registry of installed bundles and bundle signatures.

- `appliance.models.registry`: `ModelRegistry` (install, verify, activate, rollback,
  history) over the ``model_events`` history, which says which model is active.
- `appliance.models.signing`: ed25519 signatures over ``manifest.json`` and the keys a
  node trusts.

Errors (all `FameNodeError`)::

    BundleError               a bundle is refused (appliance.errors)
    └── SignatureError        unsigned where required, malformed, bad, or untrusted key
    KeyFileError              a key file is missing or not an ed25519 key
    ModelRegistryError        unknown model, nothing to roll back to

`ModelRegistry` is imported lazily from here: `appliance.bundle` imports the signing
module, and the registry imports `appliance.bundle`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from appliance.models.registry import ActiveModel, ModelRegistry, ModelRegistryError

__all__ = ["ActiveModel", "ModelRegistry", "ModelRegistryError"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from appliance.models import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
