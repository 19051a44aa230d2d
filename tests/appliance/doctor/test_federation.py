"""The doctor's federation check with certificates made here with `cryptography` and a
real TLS server standing in for the SuperLink's Fleet API port: a good set is green;
expired, expiring, foreign-CA, open-key and unreachable cases are each named."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.config import load_config
from appliance.doctor.federation import (
    FederationTarget,
    check_federation,
    federation_findings,
)
from appliance.doctor.findings import Finding

NOW = datetime.now(UTC)


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str, *, days: int = 3650, start: datetime | None = None) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    start = start or NOW - timedelta(days=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def _leaf(ca: Issued, cn: str, *, server: bool, days: int = 365) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    names: list[x509.GeneralName] = [x509.DNSName(cn)]
    if server:
        names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False
        )
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(cert, key)


def _pem(path: Path, *certs: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path


def _key(path: Path, key: ec.EllipticCurvePrivateKey, mode: int = 0o600) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(mode)
    return path


@pytest.fixture
def superlink(tmp_path: Path) -> Iterator[tuple[Issued, int]]:
    """A TLS server on 127.0.0.1 with a certificate from the federation's CA."""
    ca = _ca("federation CA")
    server = _leaf(ca, "localhost", server=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(
        _pem(tmp_path / "server.pem", server.cert), _key(tmp_path / "server.key", server.key)
    )
    ctx.set_alpn_protocols(["h2"])
    sock = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                with ctx.wrap_socket(conn, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield ca, int(sock.getsockname()[1])
    finally:
        stop.set()
        thread.join(2)
        sock.close()


def _target(tmp_path: Path, ca: Issued, port: int) -> FederationTarget:
    node = _leaf(ca, "hospital-a", server=False)
    return FederationTarget(
        address=f"localhost:{port}",
        root_certificates=_pem(tmp_path / "ca.pem", ca.cert),
        certificate=_pem(tmp_path / "node.pem", node.cert),
        private_key=_key(tmp_path / "node.key", node.key),
    )


def _by_level(findings: list[Finding]) -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = {"ok": [], "warn": [], "fail": []}
    for f in findings:
        out[f.level].append(f)
    return out


def test_not_configured_is_skipped(tmp_path: Path) -> None:
    (f,) = check_federation(load_config(env={"FAME_NODE_PATHS__ROOT": str(tmp_path)}))
    assert f.level == "ok" and f.detail.startswith("federation not configured")


def test_a_good_set_is_green(tmp_path: Path, superlink: tuple[Issued, int]) -> None:
    ca, port = superlink
    found = _by_level(list(federation_findings(_target(tmp_path, ca, port), NOW)))
    assert not found["warn"] and not found["fail"], found
    details = " | ".join(f.detail for f in found["ok"])
    assert "CA 'federation CA'" in details and "valid until" in details
    assert "chains to the federation's CA" in details
    assert "readable by the node only" in details
    assert f"SuperLink localhost:{port} presents a certificate that verifies" in details


def test_an_expired_ca_fails_and_one_expiring_soon_warns(
    tmp_path: Path, superlink: tuple[Issued, int]
) -> None:
    ca, port = superlink
    target = _target(tmp_path, ca, port)
    old = _ca("old CA", days=30, start=NOW - timedelta(days=60))
    _pem(tmp_path / "old.pem", old.cert)
    found = _by_level(
        list(federation_findings(replace(target, root_certificates=tmp_path / "old.pem"), NOW))
    )
    assert any("CA 'old CA'" in f.detail and "expired on" in f.detail for f in found["fail"])
    assert all(f.fix for f in found["fail"])
    soon = _ca("soon CA", days=11)
    _pem(tmp_path / "soon.pem", soon.cert)
    found = _by_level(
        list(federation_findings(replace(target, root_certificates=tmp_path / "soon.pem"), NOW))
    )
    (warn,) = [f for f in found["warn"] if "soon CA" in f.detail]
    assert "expires in 9 day(s)" in warn.detail and "renewed" in warn.fix


def test_certificates_of_another_ca_do_not_verify(
    tmp_path: Path, superlink: tuple[Issued, int]
) -> None:
    ca, port = superlink
    target = _target(tmp_path, ca, port)
    other = _ca("someone else's CA")
    stranger = _leaf(other, "hospital-a", server=False)
    target = replace(
        target,
        certificate=_pem(tmp_path / "stranger.pem", stranger.cert),
        private_key=_key(tmp_path / "stranger.key", stranger.key),
    )
    fails = _by_level(list(federation_findings(target, NOW)))["fail"]
    assert any("does not chain to the federation's CA" in f.detail for f in fails), fails
    # The SuperLink checked against another CA: its certificate does not verify.
    target = replace(target, root_certificates=_pem(tmp_path / "other.pem", other.cert))
    fails = _by_level(list(federation_findings(target, NOW)))["fail"]
    assert any("certificate does not verify" in f.detail for f in fails), fails


def test_a_key_open_to_everyone_fails_and_a_mismatched_one_too(
    tmp_path: Path, superlink: tuple[Issued, int]
) -> None:
    ca, port = superlink
    target = _target(tmp_path, ca, port)
    assert target.private_key is not None
    target.private_key.chmod(0o644)
    fails = _by_level(list(federation_findings(target, NOW)))["fail"]
    (fail,) = [f for f in fails if "readable by every user" in f.detail]
    assert "chmod 0600" in fail.fix and "disclosed" in fail.fix
    wrong = _key(tmp_path / "wrong.key", ec.generate_private_key(ec.SECP256R1()))
    fails = _by_level(list(federation_findings(replace(target, private_key=wrong), NOW)))["fail"]
    assert any("does not belong to the node certificate" in f.detail for f in fails)


def test_an_unreachable_superlink_warns(tmp_path: Path) -> None:
    ca = _ca("federation CA")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    found = _by_level(list(federation_findings(_target(tmp_path, ca, port), NOW)))
    assert not found["fail"], found
    (warn,) = found["warn"]
    assert "cannot be reached" in warn.detail and f"port {port}" in warn.fix


def test_unreadable_and_garbage_files_fail(tmp_path: Path) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate")
    target = FederationTarget("localhost:1", garbage)
    fails = _by_level(list(federation_findings(target, NOW)))["fail"]
    assert any("is not PEM certificates" in f.detail for f in fails), fails
    target = FederationTarget("localhost:1", tmp_path / "missing.pem")
    fails = _by_level(list(federation_findings(target, NOW)))["fail"]
    assert any("cannot be read" in f.detail for f in fails), fails


def _ssh_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def test_the_config_section_as_the_supernode_reads_it(
    tmp_path: Path, superlink: tuple[Issued, int]
) -> None:
    """federation.* from the real config: TLS CA, the OpenSSH ECDSA key flower-supernode
    reads, the SuperNode's local port."""
    ca, port = superlink
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        local = s.getsockname()[1]
    env = {
        "FAME_NODE_PATHS__ROOT": str(tmp_path / "node"),
        "FAME_NODE_FEDERATION__ENABLED": "true",
        "FAME_NODE_FEDERATION__SUPERLINK": f"localhost:{port}",
        "FAME_NODE_FEDERATION__ROOT_CERTIFICATES": str(_pem(tmp_path / "ca.pem", ca.cert)),
        "FAME_NODE_FEDERATION__PRIVATE_KEY": str(
            _ssh_key(tmp_path / "node.key", ec.generate_private_key(ec.SECP384R1()))
        ),
        "FAME_NODE_FEDERATION__SUPERNODE_PORT": str(local),
    }
    found = _by_level(list(check_federation(load_config(env=env))))
    assert not found["warn"] and not found["fail"], found
    assert any(f"127.0.0.1:{local} is free" in f.detail for f in found["ok"])
    assert any("verifies against the federation's CA" in f.detail for f in found["ok"])
    # An RSA key: flower-supernode refuses it at start; doctor says so first.
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    env["FAME_NODE_FEDERATION__PRIVATE_KEY"] = str(_ssh_key(tmp_path / "rsa.key", rsa_key))
    fails = _by_level(list(check_federation(load_config(env=env))))["fail"]
    assert any("is not an ECDSA key" in f.detail and "ecdsa" in f.fix for f in fails), fails
