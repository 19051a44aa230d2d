"""The node's own model-signing key: it signs the bundles the node exports itself.

A node that deploys a federated global model exports it as a new bundle version
(`appliance.federation.deploy`) and signs that bundle's manifest with a key of its own, so
that the bundle verifies under ``models.require_signature`` like any other and a change
to it after export is refused. The key pair is created at first use in the node's keys
folder, ``<paths.root>/keys/`` (mode 0750: the GUI's group reads the public key):
``node-models.key`` (0600, the node's user only) and ``node-models.pub``. The model
registry trusts that public key beside ``models.trusted_keys`` (`own_trusted_key`):
whoever can write the node's data folder can change its models anyway.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.config import NodeConfig
from appliance.models.signing import (
    KeyFileError,
    TrustedKey,
    generate_keypair,
    load_private_key,
    load_public_key,
)

KEYS_FOLDER = "keys"  # under paths.root
KEY_PREFIX = "node-models"


def key_prefix(config: NodeConfig) -> Path:
    return config.paths.root.expanduser().resolve() / KEYS_FOLDER / KEY_PREFIX


def public_key_path(config: NodeConfig) -> Path:
    prefix = key_prefix(config)
    return prefix.with_name(prefix.name + ".pub")


def own_trusted_key(config: NodeConfig) -> TrustedKey | None:
    """The node's own public key, once created (None before); KeyFileError if it is bad."""
    path = public_key_path(config)
    if not path.is_file():
        return None
    return TrustedKey(load_public_key(path), str(path))


def node_signing_key(config: NodeConfig) -> Ed25519PrivateKey:
    """The node's private signing key, created (with its public key) on first use."""
    prefix = key_prefix(config)
    private = prefix.with_name(prefix.name + ".key")
    if not private.exists():
        prefix.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        try:
            generate_keypair(prefix)
        except KeyFileError:
            if not private.exists():  # a half pair: the .pub without its .key
                raise
        os.chmod(prefix.parent, 0o750)
    key = load_private_key(private)
    public = own_trusted_key(config)
    if public is None or public.fingerprint != TrustedKey(key.public_key(), "").fingerprint:
        raise KeyFileError(
            f"{private} and {public_key_path(config)} are not one key pair: move both away "
            "(the node creates a new pair) or restore the matching .pub",
            path=public_key_path(config),
        )
    return key


__all__ = ["KEYS_FOLDER", "key_prefix", "node_signing_key", "own_trusted_key", "public_key_path"]
