#!/usr/bin/env python3
"""Keys and certificates of a FAME federation, made with `cryptography` (no network).

Subcommands (run with the coordinator's Python, e.g. ``.venv/bin/python``):

``test-ca OUT --name HOST [--name HOST ...]``
    A test certificate authority (``ca.crt``, ``ca.key``) and the SuperLink's TLS server
    certificate signed by it (``server.crt``, ``server.key``), valid for each HOST (DNS
    name or IP address: what the hospitals put in ``federation.superlink``). For tests and
    trials only: a real federation's certificate comes from the hospital's or a public CA
    (``csr``), and ``ca.key`` must never leave the machine that made it.
``csr OUT --name HOST [...]``
    A SuperLink server key (``server.key``) and a certificate signing request
    (``server.csr``) with the same names, for a real CA to sign.
``node-key PREFIX``
    A SuperNode authentication key pair, ECDSA P-384 in OpenSSH format (``PREFIX`` and
    ``PREFIX.pub``): what ``ssh-keygen -t ecdsa -b 384 -N "" -f PREFIX`` writes, for
    machines without OpenSSH. The ``.pub`` file is what the coordinator registers.

Private keys are written mode 0600 and never over an existing file (``--force`` to
replace test material); a bad name or an existing output is an error that says so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


class CertError(Exception):
    """Bad input to this script: the message says what was received and what to do."""


def _names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for host in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        if not _HOSTNAME.fullmatch(host):
            raise CertError(
                f"--name {host!r} is not a host name or IP address (give the host the "
                "hospitals connect to, without the port: fl.example.org or 10.0.0.5)"
            )
        out.append(x509.DNSName(host))
    if not out:
        raise CertError("no --name given: name the host(s) the SuperLink is reached at")
    return out


def _write(path: Path, data: bytes, *, private: bool, force: bool) -> None:
    if path.exists() and not force:
        raise CertError(f"{path} exists: not replaced (remove it, or --force for test material)")
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600 if private else 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(path, 0o600 if private else 0o644)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_test_ca(out: Path, hosts: Sequence[str], days: int = 365, force: bool = False) -> None:
    """ca.crt / ca.key and server.crt / server.key for `hosts` under `out`."""
    names = _names(hosts)
    if not 1 <= days <= 3650:
        raise CertError(f"--days {days}: expected 1 to 3650")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "FAME federation test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA384())
    )
    pem = serialization.Encoding.PEM
    _write(out / "ca.key", _key_pem(ca_key), private=True, force=force)
    _write(out / "ca.crt", ca.public_bytes(pem), private=False, force=force)
    _write(out / "server.key", _key_pem(server_key), private=True, force=force)
    _write(out / "server.crt", server.public_bytes(pem), private=False, force=force)


def make_csr(out: Path, hosts: Sequence[str], force: bool = False) -> None:
    """server.key and server.csr for `hosts`, for a real CA to sign."""
    names = _names(hosts)
    key = ec.generate_private_key(ec.SECP384R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA384())
    )
    _write(out / "server.key", _key_pem(key), private=True, force=force)
    _write(
        out / "server.csr",
        csr.public_bytes(serialization.Encoding.PEM),
        private=False,
        force=force,
    )


def make_node_key(prefix: Path, force: bool = False) -> None:
    """An ECDSA P-384 key pair in OpenSSH format: PREFIX (private), PREFIX.pub."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    _write(prefix, private, private=True, force=force)
    _write(prefix.with_name(prefix.name + ".pub"), public + b"\n", private=False, force=force)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ca = sub.add_parser("test-ca", help="a test CA and the SuperLink's server certificate")
    ca.add_argument("out", type=Path)
    ca.add_argument("--name", action="append", default=[], help="host name or IP (repeat)")
    ca.add_argument("--days", type=int, default=365)
    ca.add_argument("--force", action="store_true", help="replace existing test material")
    csr = sub.add_parser("csr", help="the SuperLink's key and a signing request for a real CA")
    csr.add_argument("out", type=Path)
    csr.add_argument("--name", action="append", default=[], help="host name or IP (repeat)")
    csr.add_argument("--force", action="store_true")
    node = sub.add_parser("node-key", help="a SuperNode authentication key (ECDSA P-384)")
    node.add_argument("prefix", type=Path)
    node.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "test-ca":
            make_test_ca(args.out, args.name, args.days, args.force)
        elif args.command == "csr":
            make_csr(args.out, args.name, args.force)
        else:
            make_node_key(args.prefix, args.force)
    except CertError as exc:
        print(f"make_certs: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
