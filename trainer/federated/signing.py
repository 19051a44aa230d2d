"""The coordinator's signature over each global model, and the node's check of it.

The ServerApp signs, with the federation's Ed25519 key, the statement "this is the global
model of run R, round N, and its arrays have digest D" (`statement`), and sends the digest
and the signature with the arrays. A node recomputes the digest from the arrays it
received (`trainer.federated.wire.arrays_digest`), and accepts the model only when that
digest equals the one sent and the signature verifies against one of the keys it trusts
(`verify_global`). Binding run and round stops a recorded older model from being replayed
as a newer one.

Keys are the files of `appliance.models.signing` (PEM PKCS#8 private keys, PEM or base64
public keys): the coordinator's model-signing key is the same kind of key that signs
bundles, and a node's ``federation.trusted_federation_keys`` folder holds its ``.pub``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.models.signing import TrustedKey, load_public_key
from trainer.federated import GlobalModelError

_DOMAIN = "fame-node/global-model/v1"


def statement(run_id: int, server_round: int, digest: str) -> bytes:
    """The exact bytes signed for the global model of `run_id`, `server_round`."""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise GlobalModelError(f"digest {digest[:80]!r} is not a hex sha256 (64 characters)")
    return f"{_DOMAIN}\nrun {int(run_id)}\nround {int(server_round)}\ndigest {digest}\n".encode()


def sign_global(key: Ed25519PrivateKey, run_id: int, server_round: int, digest: str) -> bytes:
    return key.sign(statement(run_id, server_round, digest))


def trusted_keys_in(folder: Path) -> list[TrustedKey]:
    """Every public key file (``*.pub``, ``*.pem``) in `folder`; GlobalModelError if none."""
    if not folder.is_dir():
        raise GlobalModelError(
            f"federation.trusted_federation_keys = {folder} is not a folder: put the "
            "coordinator's model-signing public key (.pub) in a folder and name it there"
        )
    files = sorted(p for p in folder.iterdir() if p.suffix in (".pub", ".pem") and p.is_file())
    if not files:
        raise GlobalModelError(
            f"{folder} holds no public key (*.pub, *.pem): no global model can be accepted; "
            "add the coordinator's model-signing public key"
        )
    return [TrustedKey(load_public_key(p), str(p)) for p in files]


def verify_global(
    trusted: Sequence[TrustedKey],
    run_id: int,
    server_round: int,
    digest_sent: str,
    digest_received: str,
    signature: bytes,
) -> TrustedKey:
    """The trusted key that signed this global model; GlobalModelError otherwise."""
    if digest_sent != digest_received:
        raise GlobalModelError(
            f"the arrays received have digest {digest_received[:16]}..., the coordinator "
            f"signed {digest_sent[:16]}...: the model was changed on the way or is not the "
            "one signed; refused"
        )
    if not trusted:
        raise GlobalModelError("this node trusts no federation key: every global model is refused")
    message = statement(run_id, server_round, digest_received)
    for key in trusted:
        try:
            key.key.verify(signature, message)
        except InvalidSignature:
            continue
        return key
    raise GlobalModelError(
        f"the signature on the global model of round {server_round} does not verify against "
        f"any of the {len(trusted)} trusted federation key(s) "
        f"({', '.join(k.fingerprint for k in trusted)}): refused. If the coordinator changed "
        "its key, get the new public key from it by another channel"
    )
