"""Doctor check of the federation's address and certificates (the ``federation`` section).

The node's SuperNode talks TLS to the federation's SuperLink: it trusts the CA in
``root_certificates`` and may hold a certificate of its own and a private key (TLS or
SuperNode authentication). Checked here: every file readable and parseable, certificates
within their validity (expired or not yet valid: fail; under `EXPIRY_WARN_DAYS` left:
warn), the node's certificate chaining to the CA (with `cryptography`'s RFC 5280 path
validation), the private key not open to other users, readable, unencrypted and matching
the certificate, and the SuperLink reachable with a certificate that verifies against the
CA for its host name. An unreachable SuperLink is a warning (the SuperNode retries);
broken certificates or keys fail: the federation the config turns on cannot run.

The check looks at a `FederationTarget` (`target_of` maps the config's section to it;
the certificate of the node itself is for an mTLS setup: Flower 1.42 has none); a node
with ``federation.enabled = false`` is "federation not configured". The SuperNode's local
port must be free, or held by the service's own SuperNode.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification

from appliance.config import NodeConfig
from appliance.doctor.findings import Finding
from appliance.federation.config import FederationConfig

EXPIRY_WARN_DAYS = 30
TIMEOUT_S = 10.0
CHECK = "federation"


@dataclass(frozen=True)
class FederationTarget:
    """What the federation check looks at."""

    address: str | None  # the SuperLink's Fleet API, host:port
    root_certificates: Path | None  # PEM CA bundle the SuperLink's certificate chains to
    certificate: Path | None = None  # this node's certificate (PEM, leaf first), if any
    private_key: Path | None = None  # its private key, or the SuperNode auth key
    insecure: bool = False  # no TLS at all


def target_of(section: FederationConfig) -> FederationTarget:
    """The federation section of the config as a `FederationTarget`."""
    return FederationTarget(
        address=section.superlink,
        root_certificates=section.root_certificates,
        private_key=section.private_key,
        insecure=section.insecure,
    )


def check_federation(config: NodeConfig) -> Iterator[Finding]:
    section = config.federation
    if not section.enabled:
        yield Finding(CHECK, "ok", "federation not configured (federation.enabled = false)")
        return
    yield from federation_findings(target_of(section), datetime.now(UTC))
    yield app_pin_finding()
    # The SuperNode the service starts listens on 127.0.0.1 for its ClientApps.
    from appliance.doctor.network import port_findings

    yield from port_findings(
        CHECK, "federation.supernode", "127.0.0.1", section.supernode_port, config
    )


def app_pin_finding() -> Finding:
    """The installed ClientApp bundle that `fame-node run` pins (`federation.app_pin`)."""
    from appliance.federation import FederationError
    from appliance.federation.app_pin import installed_content

    try:
        digest = installed_content().digest
    except (FederationError, ImportError) as exc:
        return Finding(
            CHECK,
            "fail",
            f"the installed ClientApp bundle cannot be pinned: {exc}",
            "reinstall fame-node with the federation extra (pip install 'fame-node[federation]')",
        )
    return Finding(
        CHECK,
        "ok",
        f"ClientApp pinned to the installed app bundle, content digest {digest[:16]}: the "
        "coordinator must run this fame-node version; any other app bundle is refused",
    )


def federation_findings(t: FederationTarget, now: datetime) -> Iterator[Finding]:
    if t.address is None:
        yield Finding(
            CHECK,
            "fail",
            "the federation is on but has no SuperLink address",
            'set federation.superlink = "host:port" (the coordinator\'s Fleet API)',
        )
        return
    roots: list[x509.Certificate] = []
    if t.insecure:
        yield Finding(
            CHECK,
            "warn",
            "the federation runs without TLS (insecure): model updates cross the network "
            "unencrypted and the SuperLink is not authenticated",
            "get the federation's CA certificate from the coordinator and set "
            "federation.root_certificates",
        )
    elif t.root_certificates is None:
        yield Finding(
            CHECK,
            "fail",
            "no federation.root_certificates (the federation's CA)",
            "put the CA certificate from the coordinator in /etc/fame-node/ and "
            "name it in federation.root_certificates",
        )
        return
    else:
        loaded = yield from _load_certs(t.root_certificates, "CA", now)
        roots = [c for c in loaded if _is_ca(c)]
        if loaded and not roots:
            yield Finding(
                CHECK,
                "fail",
                f"{t.root_certificates} holds no CA certificate",
                "use the federation's CA certificate, not a server certificate",
            )
    chain: list[x509.Certificate] = []
    if t.certificate is not None:
        chain = yield from _load_certs(t.certificate, "node certificate", now)
        if chain and roots:
            yield _verify_client(chain, roots, now, t.certificate)
    if t.private_key is not None:
        yield from _check_key(t.private_key, chain[0] if chain else None)
    yield from _check_superlink(t.address, roots, now, t.insecure)


def _load_certs(
    path: Path, what: str, now: datetime
) -> Generator[Finding, None, list[x509.Certificate]]:
    """Findings on the PEM certificates in `path`; returns them (generator return)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        yield Finding(
            CHECK,
            "fail",
            f"the {what} {path} cannot be read ({exc.strerror})",
            "check the path, and that the node's user may read it (chmod 0644 for a certificate)",
        )
        return []
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        yield Finding(
            CHECK,
            "fail",
            f"the {what} {path} is not PEM certificates ({exc})",
            "use the PEM file the coordinator gave (-----BEGIN CERTIFICATE-----)",
        )
        return []
    for cert in certs:
        yield _validity(cert, f"{what} {_name(cert)} ({path})", now)
    return certs


def _validity(cert: x509.Certificate, label: str, now: datetime) -> Finding:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < start:
        return Finding(
            CHECK,
            "fail",
            f"{label} is not valid before {start:%Y-%m-%d}",
            "check this machine's clock (timedatectl), or get a current certificate",
        )
    if now >= end:
        return Finding(
            CHECK,
            "fail",
            f"{label} expired on {end:%Y-%m-%d}",
            "ask the federation's coordinator for a renewed certificate",
        )
    days = (end - now).days
    if days < EXPIRY_WARN_DAYS:
        return Finding(
            CHECK,
            "warn",
            f"{label} expires in {days} day(s), on {end:%Y-%m-%d}",
            "ask the federation's coordinator for a renewed certificate now",
        )
    return Finding(CHECK, "ok", f"{label} valid until {end:%Y-%m-%d}")


def _verify_client(
    chain: list[x509.Certificate], roots: list[x509.Certificate], now: datetime, path: Path
) -> Finding:
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(roots))
        .time(now.replace(tzinfo=None))
        .build_client_verifier()
    )
    try:
        verifier.verify(chain[0], chain[1:])
    except verification.VerificationError as exc:
        return Finding(
            CHECK,
            "fail",
            f"the node certificate {path} does not chain to the federation's CA: {exc}",
            "use the certificate the federation's CA issued for this node (with "
            "any intermediate certificates after it in the file)",
        )
    return Finding(CHECK, "ok", f"the node certificate {path} chains to the federation's CA")


def _check_key(path: Path, cert: x509.Certificate | None) -> Iterator[Finding]:
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        yield Finding(
            CHECK,
            "fail",
            f"the private key {path} cannot be read ({exc.strerror})",
            "give it to the node's user: chown fame-node PATH; chmod 0600 PATH",
        )
        return
    if st.st_mode & (stat.S_IROTH | stat.S_IWOTH):
        yield Finding(
            CHECK,
            "fail",
            f"the private key {path} is readable by every user (mode {stat.filemode(st.st_mode)})",
            f"chmod 0600 {path}, then have the coordinator replace the key: treat it as disclosed",
        )
    elif st.st_mode & (stat.S_IRGRP | stat.S_IWGRP):
        yield Finding(
            CHECK,
            "warn",
            f"the private key {path} is open to its group (mode {stat.filemode(st.st_mode)})",
            f"chmod 0600 {path}",
        )
    try:
        # The SuperNode's authentication key is OpenSSH's format (flower-supernode reads it
        # with load_ssh_private_key); a TLS key is PEM.
        if data.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
            key: Any = serialization.load_ssh_private_key(data, password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                yield Finding(
                    CHECK,
                    "fail",
                    f"the SuperNode key {path} is not an ECDSA key: flower-supernode refuses it",
                    "make one with ssh-keygen -t "
                    "ecdsa -b 384 -N '' and register its public half at the "
                    "coordinator",
                )
                return
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        yield Finding(
            CHECK,
            "fail",
            f"the private key {path} is encrypted: the SuperNode cannot read it unattended",
            "store it unencrypted, readable only by the node's user (chmod 0600)",
        )
        return
    except ValueError as exc:
        yield Finding(
            CHECK,
            "fail",
            f"{path} is not a PEM private key ({exc})",
            "use the key file the certificate was issued for",
        )
        return
    if cert is not None:
        ours = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        theirs = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if ours != theirs:
            yield Finding(
                CHECK,
                "fail",
                f"the private key {path} does not belong to the node certificate",
                "use the key the certificate was issued for",
            )
            return
    yield Finding(CHECK, "ok", f"private key {path} readable by the node only")


def _check_superlink(
    address: str, roots: list[x509.Certificate], now: datetime, insecure: bool
) -> Iterator[Finding]:
    try:
        host, port = _split(address)
    except ValueError as exc:
        yield Finding(CHECK, "fail", str(exc), "write it as host:port (IPv6: [addr]:port)")
        return
    try:
        raw = socket.create_connection((host, port), timeout=TIMEOUT_S)
    except OSError as exc:
        yield Finding(
            CHECK,
            "warn",
            f"the SuperLink {address} cannot be reached "
            f"({exc.strerror or exc}): the node does not join rounds until it can",
            "check federation.superlink, the coordinator and the firewall "
            f"(outgoing TCP to port {port})",
        )
        return
    if insecure or not roots:
        raw.close()
        yield Finding(CHECK, "ok", f"the SuperLink {address} accepts TCP connections")
        return
    # Fetched without verifying, then verified with cryptography, so the finding can say
    # what is wrong with the certificate rather than only that a handshake failed.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])  # gRPC
    try:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        yield Finding(
            CHECK,
            "warn",
            f"the SuperLink {address} does not complete a TLS handshake ({exc})",
            "check that federation.superlink names the SuperLink's Fleet API port, with TLS on",
        )
        return
    if der is None:
        yield Finding(
            CHECK,
            "fail",
            f"the SuperLink {address} sent no certificate",
            "the coordinator must run the SuperLink with its TLS certificate",
        )
        return
    leaf = x509.load_der_x509_certificate(der)
    yield _validity(leaf, f"the SuperLink's certificate {_name(leaf)}", now)
    subject: verification.Subject
    try:
        subject = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        subject = x509.DNSName(host)
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(roots))
        .time(now.replace(tzinfo=None))
        .build_server_verifier(subject)
    )
    try:
        verifier.verify(leaf, [])
    except verification.VerificationError as exc:
        yield Finding(
            CHECK,
            "fail",
            f"the SuperLink {address}'s certificate does not verify "
            f"against federation.root_certificates for {host!r}: {exc}",
            "get the federation's current CA certificate from the coordinator, and "
            "use the host name the SuperLink's certificate was issued for",
        )
        return
    yield Finding(
        CHECK,
        "ok",
        f"the SuperLink {address} presents a certificate that verifies against the federation's CA",
    )


def _split(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"federation.superlink = {address!r} is not host:port")
    return host.strip("[]"), int(port)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _name(cert: x509.Certificate) -> str:
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    value = cn[0].value if cn else None
    return repr(value) if isinstance(value, str) else cert.subject.rfc4514_string()
