"""Certificates for the tests, the benchmarks and the demo connector: a self-signed one
(what a connector's certificate-expiry gauge reads), and a test certificate authority
that issues server and client certificates as PEM files (TLS and mTLS)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(
    not_valid_after: datetime.datetime,
    common_name: str = "connector.test",
    issuer_key: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate valid from a year before `not_valid_after` until it, and its key;
    signed by `issuer_key` instead of its own key when given (an unverifiable chain)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_valid_after - datetime.timedelta(days=365))
        .not_valid_after(not_valid_after)
        .sign(issuer_key or key, hashes.SHA256())
    )
    return certificate, key


def self_signed_file(path: Path, days: float, common_name: str = "connector.test") -> Path:
    """`path`, now holding a self-signed PEM certificate that expires in `days` days."""
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days)
    certificate, _ = self_signed(expires, common_name)
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path

    @property
    def pair(self) -> tuple[bytes, bytes]:
        """(key, certificate) bytes, the order gRPC's channel credentials take."""
        return self.key.read_bytes(), self.cert.read_bytes()


class Authority:
    """A test CA that issues server and client certificates into `directory`."""

    def __init__(self, directory: Path, name: str = "test CA") -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = self._sign(self.name, self.key.public_key(), ca=True, sans=())
        self.cert_file = directory / f"{name.replace(' ', '-')}.pem"
        self.cert_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        file_name: str,
        common_name: str,
        *sans: x509.GeneralName,
        more_common_names: tuple[str, ...] = (),
    ) -> Issued:
        """A certificate signed by this CA (its subject may hold several CNs)."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, name)
                for name in (common_name, *more_common_names)
            ]
        )
        cert = self._sign(subject, key.public_key(), ca=False, sans=sans)
        issued = Issued(self.directory / f"{file_name}.crt", self.directory / f"{file_name}.key")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return issued

    def _sign(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey,
        ca: bool,
        sans: tuple[x509.GeneralName, ...],
    ) -> x509.Certificate:
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self.key, hashes.SHA256())


SPIFFE = "spiffe://example.org/tenant/"
"""The SAN URI prefix the test client certificates name their tenant with."""


@dataclass(frozen=True)
class Pki:
    """A CA, the server's certificate and clients, for TLS and mTLS tests."""

    ca: Authority
    server: Issued  # localhost and 127.0.0.1
    acme_uri: Issued  # SAN URI spiffe://example.org/tenant/acme, CN "agent-7"
    globex_cn: Issued  # CN "globex", no URI
    rogue: Issued  # acme's URI, signed by another CA

    @classmethod
    def create(cls, directory: Path) -> Pki:
        """All of them, as PEM files in `directory`."""
        ca = Authority(directory)
        server = ca.issue(
            "server",
            "localhost",
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        )
        acme = ca.issue("acme", "agent-7", x509.UniformResourceIdentifier(f"{SPIFFE}acme"))
        globex = ca.issue("globex", "globex", x509.DNSName("agent.globex.example"))
        rogue = Authority(directory, "rogue CA").issue(
            "rogue", "acme", x509.UniformResourceIdentifier(f"{SPIFFE}acme")
        )
        return cls(ca, server, acme, globex, rogue)
