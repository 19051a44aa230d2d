"""The coordinator's scripts (`packaging/coordinator/`) run for real, in seconds.

The TLS material `make_certs.py test-ca` writes chains (server certificate signed by the
CA, for the names asked, for server authentication), keys are private to their owner and
never overwritten; `node-key` writes the OpenSSH ECDSA P-384 pair Flower's SuperNode and
`flwr supernode register` load; bad input and missing settings are refused with what was
wrong. (The SuperLink they configure is run by the `federation` tests.)
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from cryptography.hazmat.primitives.serialization.ssh import load_ssh_public_key
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.federation.harness import BIN, COORDINATOR


def _certs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(COORDINATOR / "make_certs.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_test_ca_chains_to_the_server_certificate_for_the_names_given(tmp_path: Path) -> None:
    done = _certs(
        "test-ca", str(tmp_path / "tls"), "--name", "fl.example.org", "--name", "10.0.0.5"
    )
    assert done.returncode == 0, done.stderr
    ca = x509.load_pem_x509_certificate((tmp_path / "tls" / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "tls" / "server.crt").read_bytes())
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fl.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for key in ("ca.key", "server.key"):
        assert (tmp_path / "tls" / key).stat().st_mode & 0o777 == 0o600
    again = _certs("test-ca", str(tmp_path / "tls"), "--name", "fl.example.org")
    assert again.returncode == 2 and "exists: not replaced" in again.stderr


@pytest.mark.parametrize("name", ["fl.example.org:9092", "two words", "-bad.org", ""])
def test_a_name_that_is_no_host_is_refused(tmp_path: Path, name: str) -> None:
    done = _certs("test-ca", str(tmp_path / "tls"), f"--name={name}")
    assert done.returncode == 2
    assert "is not a host name or IP address" in done.stderr or "no --name" in done.stderr
    assert not (tmp_path / "tls" / "ca.key").exists()


def test_csr_names_the_hosts_for_a_real_ca(tmp_path: Path) -> None:
    assert _certs("csr", str(tmp_path), "--name", "fl.example.org").returncode == 0
    csr = x509.load_pem_x509_csr((tmp_path / "server.csr").read_bytes())
    assert csr.is_signature_valid
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fl.example.org"]


def test_node_key_is_an_openssh_p384_pair(tmp_path: Path) -> None:
    assert _certs("node-key", str(tmp_path / "hospital")).returncode == 0
    private = load_ssh_private_key((tmp_path / "hospital").read_bytes(), password=None)
    public = load_ssh_public_key((tmp_path / "hospital.pub").read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp384r1"
    assert private.public_key().public_numbers() == public.public_numbers()
    assert (tmp_path / "hospital").stat().st_mode & 0o777 == 0o600


def test_superlink_script_refuses_without_its_tls_material(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAME_FED_")}
    env.update(
        FAME_FED_TLS_DIR=str(tmp_path / "tls"),
        FAME_FED_DATABASE=str(tmp_path / "superlink.db"),
        FAME_FED_BIN=str(BIN),
    )
    done = subprocess.run(
        [str(COORDINATOR / "superlink.sh")], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert "FAME_FED_TLS_DIR" in done.stderr and "make_certs.py" in done.stderr
    (tmp_path / "tls").mkdir()
    done = subprocess.run(
        [str(COORDINATOR / "superlink.sh")], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2 and "server.crt is missing" in done.stderr


def test_run_script_needs_the_signing_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAME_FED_")}
    env.update(FAME_FED_BUNDLE=str(tmp_path), FAME_FED_SIGNING_KEY=str(tmp_path / "no.key"))
    done = subprocess.run(
        [str(COORDINATOR / "run.sh")], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert "FAME_FED_SIGNING_KEY" in done.stderr and "fame-node models keygen" in done.stderr
