"""Ed25519 signatures over the manifest: sign, verify, tampering, wrong and untrusted keys."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from appliance.bundle import load_bundle
from appliance.errors import BundleError
from appliance.models.signing import (
    SIGNATURE_NAME,
    KeyFileError,
    SignatureError,
    TrustedKey,
    fingerprint,
    generate_keypair,
    load_private_key,
    load_public_key,
    load_trusted_keys,
    raw_public,
    sign_manifest,
    verify_manifest,
)
from tests.appliance.models.bundles import flip_byte, placeholder_bundle, sign_bundle

MANIFEST = b'{"name": "tiny", "version": "1.0.0"}\n'


def _trusted(pub: Path) -> list[TrustedKey]:
    return load_trusted_keys([pub])


def test_keygen_writes_a_private_pem_only_the_owner_reads_and_never_overwrites(
    tmp_path: Path,
) -> None:
    private, public = generate_keypair(tmp_path / "fed")
    assert private.name == "fed.key" and public.name == "fed.pub"
    assert b"BEGIN PRIVATE KEY" in private.read_bytes()
    assert b"BEGIN PUBLIC KEY" in public.read_bytes()
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert raw_public(load_private_key(private).public_key()) == raw_public(load_public_key(public))
    with pytest.raises(KeyFileError, match="never overwritten"):
        generate_keypair(tmp_path / "fed")


def test_sign_then_verify_names_the_trusted_signer(tmp_path: Path) -> None:
    private, public = generate_keypair(tmp_path / "fed")
    sig = sign_manifest(MANIFEST, load_private_key(private))
    result = verify_manifest(MANIFEST, sig, _trusted(public), require_trusted=True)
    assert result is not None and result.trusted
    assert result.fingerprint == fingerprint(load_public_key(public))
    assert result.fingerprint.startswith("SHA256:")


def test_a_changed_manifest_is_a_bad_signature_whatever_the_policy(tmp_path: Path) -> None:
    private, public = generate_keypair(tmp_path / "fed")
    sig = sign_manifest(MANIFEST, load_private_key(private))
    tampered = MANIFEST.replace(b"1.0.0", b"1.0.1")
    for require in (True, False):
        with pytest.raises(SignatureError, match="bad signature") as info:
            verify_manifest(tampered, sig, _trusted(public), require_trusted=require)
        assert info.value.code == "bad_signature"
        assert "changed after it was signed" in str(info.value)


def test_a_signature_by_another_key_than_it_claims_is_bad(tmp_path: Path) -> None:
    _, fed_public = generate_keypair(tmp_path / "fed")
    other_private, _ = generate_keypair(tmp_path / "other")
    doc = json.loads(sign_manifest(MANIFEST, load_private_key(other_private)))
    doc["public_key"] = base64.b64encode(raw_public(load_public_key(fed_public))).decode()
    with pytest.raises(SignatureError) as info:
        verify_manifest(
            MANIFEST, json.dumps(doc).encode(), _trusted(fed_public), require_trusted=True
        )
    assert info.value.code == "bad_signature"
    assert info.value.fingerprint == fingerprint(load_public_key(fed_public))


def test_an_untrusted_signer_is_refused_with_its_fingerprint_and_what_to_do(
    tmp_path: Path,
) -> None:
    _, fed_public = generate_keypair(tmp_path / "fed")
    stranger_private, _ = generate_keypair(tmp_path / "stranger")
    stranger_fp = fingerprint(load_private_key(stranger_private).public_key())
    sig = sign_manifest(MANIFEST, load_private_key(stranger_private))
    with pytest.raises(SignatureError) as info:
        verify_manifest(MANIFEST, sig, _trusted(fed_public), require_trusted=True)
    assert info.value.code == "untrusted_key" and info.value.fingerprint == stranger_fp
    message = str(info.value)
    assert stranger_fp in message and "models.trusted_keys" in message
    assert fingerprint(load_public_key(fed_public)) in message  # what it does trust
    # Without the requirement the signature is still checked, and reported as untrusted.
    result = verify_manifest(MANIFEST, sig, _trusted(fed_public), require_trusted=False)
    assert result is not None and not result.trusted


def test_unsigned_is_refused_only_where_signatures_are_required(tmp_path: Path) -> None:
    _, public = generate_keypair(tmp_path / "fed")
    with pytest.raises(SignatureError, match="not signed") as info:
        verify_manifest(MANIFEST, None, _trusted(public), require_trusted=True)
    assert info.value.code == "unsigned"
    assert verify_manifest(MANIFEST, None, [], require_trusted=False) is None


def test_a_malformed_signature_file_is_refused(tmp_path: Path) -> None:
    for junk in (b"not json", b'{"algorithm": "rsa"}', b'{"algorithm": "ed25519"}'):
        with pytest.raises(SignatureError, match="malformed") as info:
            verify_manifest(MANIFEST, junk, [], require_trusted=False)
        assert info.value.code == "malformed"


def test_public_keys_may_be_one_line_of_base64(tmp_path: Path) -> None:
    private, public = generate_keypair(tmp_path / "fed")
    line = tmp_path / "fed.b64"
    line.write_text(base64.b64encode(raw_public(load_public_key(public))).decode() + "\n")
    sig = sign_manifest(MANIFEST, load_private_key(private))
    result = verify_manifest(MANIFEST, sig, load_trusted_keys([line]), require_trusted=True)
    assert result is not None and result.trusted


def test_bad_key_files_say_which_file_and_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist") as info:
        load_trusted_keys([tmp_path / "missing.pub"])
    assert info.value.path == tmp_path / "missing.pub"
    junk = tmp_path / "junk.pub"
    junk.write_text("hello")
    with pytest.raises(KeyFileError, match="neither a PEM public key"):
        load_public_key(junk)
    with pytest.raises(KeyFileError, match="not an unencrypted PEM private key"):
        load_private_key(junk)


# -- in a bundle ---------------------------------------------------------------------------
def test_load_bundle_checks_the_signature_after_the_checksums(tmp_path: Path) -> None:
    private, public = generate_keypair(tmp_path / "fed")
    bundle = placeholder_bundle(tmp_path / "b")
    sign_bundle(bundle, private)
    loaded = load_bundle(bundle, trusted_keys=_trusted(public), require_signature=True)
    assert loaded.signature is not None and loaded.signature.trusted
    assert SIGNATURE_NAME not in loaded.manifest.files
    flip_byte(bundle / "model.onnx")  # the signature still matches the manifest
    with pytest.raises(BundleError, match=r"checksum mismatch for model\.onnx") as info:
        load_bundle(bundle, trusted_keys=_trusted(public), require_signature=True)
    assert "expects sha256" in str(info.value)


def test_a_manifest_listing_paths_outside_the_bundle_is_refused(tmp_path: Path) -> None:
    bundle = placeholder_bundle(tmp_path / "b")
    manifest = json.loads((bundle / "manifest.json").read_text())
    for bad in ("../evil", "/etc/passwd", SIGNATURE_NAME):
        files = dict(manifest["files"], **{bad: "0" * 64})
        (bundle / "manifest.json").write_text(json.dumps({**manifest, "files": files}))
        with pytest.raises(BundleError, match=r"refused|cannot be checksummed"):
            load_bundle(bundle)


def test_names_and_versions_must_make_folder_names(tmp_path: Path) -> None:
    bundle = placeholder_bundle(tmp_path / "b")
    manifest = json.loads((bundle / "manifest.json").read_text())
    for field, bad in (("name", "a/b"), ("version", "1@2"), ("version", "")):
        (bundle / "manifest.json").write_text(json.dumps({**manifest, field: bad}))
        with pytest.raises(BundleError, match=f"{field}"):
            load_bundle(bundle)
