"""TLS on both ports, mutual TLS, and the tenant a client certificate names.

Transports verify a client certificate against GATEWAY_TLS_CLIENT_CA_FILE during
the handshake and pass the verified leaf certificate on as PEM text
(`Credentials.client_certificate`); `CertificateTenants` turns it into a tenant
name: its subject CN, or the part of a SAN URI after a configured prefix
(`spiffe://example.org/tenant/acme` → `acme`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from gateway.settings import GatewaySettings
from gateway.tenants import validate_tenant_name


class TlsConfigError(ValueError):
    """A TLS file cannot be used; the message names the setting."""


def read_tls_file(path: Path, setting: str) -> bytes:
    """The bytes of a TLS file; TlsConfigError naming `setting` if it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from exc


def grpc_server_credentials(settings: GatewaySettings) -> grpc.ServerCredentials | None:
    """Credentials for `server.add_secure_port`; None when TLS is off (plaintext port).

    With GATEWAY_TLS_CLIENT_CA_FILE, a client must present a certificate signed by
    that CA or the handshake fails.
    """
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    key = read_tls_file(settings.tls_key_file, "GATEWAY_TLS_KEY_FILE")
    chain = read_tls_file(settings.tls_cert_file, "GATEWAY_TLS_CERT_FILE")
    ca = settings.tls_client_ca_file
    return grpc.ssl_server_credentials(
        [(key, chain)],
        root_certificates=read_tls_file(ca, "GATEWAY_TLS_CLIENT_CA_FILE") if ca else None,
        require_client_auth=ca is not None,
    )


def client_certificate_from_grpc(auth_context: Mapping[str, Any]) -> str | None:
    """The verified client certificate (PEM) of a gRPC call, from
    `context.auth_context()`; None without mTLS."""
    values = auth_context.get("x509_pem_cert") or ()
    for value in values:
        return value.decode("ascii") if isinstance(value, bytes) else str(value)
    return None


def client_certificate_from_asgi(scope: Mapping[str, Any]) -> str | None:
    """The verified client certificate (PEM) of an HTTP request, from the ASGI
    scope's `tls` extension; None without mTLS."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or ()
    return str(chain[0]) if chain else None


@dataclass(frozen=True)
class CertificateIdentity:
    """What a certificate says about its holder."""

    common_names: tuple[str, ...]
    uris: tuple[str, ...]


@functools.lru_cache(maxsize=1024)  # agents reconnect with the same certificate
def certificate_identity(pem: str) -> CertificateIdentity:
    """The subject CNs and SAN URIs of a PEM certificate; ValueError if unreadable."""
    cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    common_names = tuple(
        value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        for value in (
            attribute.value
            for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        )
    )
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
    except x509.ExtensionNotFound:
        uris = ()
    return CertificateIdentity(common_names, uris)


@dataclass(frozen=True)
class CertificateTenants:
    """Maps a verified client certificate to a tenant name, per the settings."""

    source: str  # "common_name" or "uri"
    uri_prefix: str = ""

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> CertificateTenants | None:
        """The mapping the settings ask for; None when certificates name no tenant."""
        if settings.tls_client_tenant == "none":
            return None
        return cls(settings.tls_client_tenant, settings.tls_client_uri_prefix)

    def tenant_of(self, pem: str) -> str:
        """The tenant the certificate names; ValueError saying what was expected.

        A certificate naming several (two subject CNs, or two SAN URIs under the
        prefix) is refused: which one counts would depend on the reader."""
        identity = certificate_identity(pem)
        if self.source == "common_name":
            candidates = list(identity.common_names)
            expected = "one subject common name (CN) that is a tenant name"
        else:
            candidates = [
                uri.removeprefix(self.uri_prefix)
                for uri in identity.uris
                if uri.startswith(self.uri_prefix)
            ]
            expected = f"one SAN URI {self.uri_prefix}<tenant>"
        if len(set(candidates)) > 1:
            raise ValueError(
                f"the client certificate names {len(candidates)} tenants: expected {expected}"
            )
        for candidate in candidates:
            try:
                validate_tenant_name(candidate)
            except ValueError:
                continue
            return candidate
        raise ValueError(f"the client certificate names no tenant: expected {expected}")
