"""Authentication at the edge: credentials in, a principal out (a Tenant or the Admin).

Transport adapters (gRPC, HTTP) collect the request's credentials into a
`Credentials` value; `Authenticator.authenticate` turns them into the one
principal everything after it is given. A credential is one of:

- an admin key, `authorization: Bearer <key>` whose SHA-256 is in
  GATEWAY_ADMIN_KEY_SHA256: the `Admin`, who reads every tenant's fleet and
  retires agents but sends no data;

- an API key, `authorization: Bearer oga_<id>_<secret>` (see gateway.tenants);
- a JWT, `authorization: Bearer <header>.<claims>.<signature>` (gateway.jwt_auth);
- a client certificate verified by mutual TLS (gateway.tls), when the settings
  map certificates to tenants. A bearer credential sent with it must name the
  same tenant.

An address that fails too often gets its failures refused as throttled; a valid
credential from it still passes (gateway.throttle).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from gateway.errors import Unauthenticated
from gateway.jwt_auth import JwtVerifier, jwt_verifier
from gateway.settings import GatewaySettings
from gateway.tenants import KEY_PREFIX, Tenant, TenantRegistry
from gateway.throttle import FailureThrottle, peer_address
from gateway.tls import CertificateTenants

# RFC 6750 b64token: a value with a space or a comma (two headers joined) is refused.
BEARER_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


@dataclass(frozen=True)
class Credentials:
    """What a request presents: its authorization header and where it comes from."""

    authorization: str | None
    peer: str = ""
    """The client's address as the transport reports it (for throttling and logs)."""
    client_certificate: str | None = None
    """PEM of the client certificate the TLS handshake verified (mTLS), else None."""


@dataclass(frozen=True)
class Admin:
    """The operator, by an admin key: every tenant's fleet, retiring agents; no data."""


ADMIN = Admin()

Principal = Tenant | Admin
"""Who a request is, once authenticated."""


def authorization_from(values: Iterable[str | bytes]) -> str | None:
    """The authorization value to put in `Credentials` from all the values a
    request carries: several are joined with ', ' (as HTTP combines repeated
    headers), which `authenticate` refuses rather than picking one."""
    texts = [v.decode("latin-1") if isinstance(v, bytes) else v for v in values]
    return ", ".join(texts) if texts else None


class Authenticator:
    """Turns credentials into a principal, or raises Unauthenticated."""

    def __init__(
        self,
        tenants: TenantRegistry,
        jwt: JwtVerifier | None = None,
        certificates: CertificateTenants | None = None,
        throttle: FailureThrottle | None = None,
        require_known_tenant: bool = True,
        admin_digests: Collection[str] = (),
    ) -> None:
        self.tenants = tenants
        self.jwt = jwt
        self.certificates = certificates
        self.throttle = throttle if throttle is not None else FailureThrottle(0, 1.0, 1.0)
        self.require_known_tenant = require_known_tenant
        self.admin_digests = tuple(d.lower() for d in admin_digests)

    @classmethod
    def create(cls, settings: GatewaySettings, tenants: TenantRegistry) -> Authenticator:
        """The authenticator the settings describe (reads JWT key files now)."""
        throttle = FailureThrottle(
            settings.auth_failure_limit,
            settings.auth_failure_window_seconds,
            settings.auth_block_seconds,
        )
        return cls(
            tenants,
            jwt=jwt_verifier(settings),
            certificates=CertificateTenants.from_settings(settings),
            throttle=throttle,
            require_known_tenant=settings.require_known_tenant,
            admin_digests=settings.admin_key_digests,
        )

    def authenticate(self, credentials: Credentials) -> Principal:
        """The principal the credentials prove; raise Unauthenticated (with a cause)."""
        address = peer_address(credentials.peer)
        wait = self.throttle.retry_after(address)
        try:
            # A valid credential passes even from a blocked address: the stranger
            # that failed may share it with a tenant (a NAT, a node), and a key or a
            # token cannot be guessed, so the block never helps a guesser.
            return self._authenticate(credentials)
        except Unauthenticated:
            if wait > 0:
                raise Unauthenticated(
                    "too many failed authentications from your address; "
                    f"retry after {math.ceil(wait)} s",
                    cause="throttled",
                ) from None
            self.throttle.record_failure(address)
            raise

    def tenant(self, credentials: Credentials) -> Tenant:
        """The tenant the credentials prove: data can only be sent as a tenant."""
        principal = self.authenticate(credentials)
        if not isinstance(principal, Tenant):
            raise Unauthenticated(
                "an admin key cannot send data: use the tenant's API key", cause="admin_key"
            )
        return principal

    def _authenticate(self, credentials: Credentials) -> Principal:
        if self.admin_digests and self._is_admin(credentials.authorization):
            return ADMIN
        if self.certificates is None or credentials.client_certificate is None:
            return self._bearer_tenant(credentials.authorization)
        try:
            name = self.certificates.tenant_of(credentials.client_certificate)
        except ValueError as exc:
            raise Unauthenticated(str(exc), cause="certificate") from exc
        tenant = self._known(Tenant(name), "the client certificate")
        if credentials.authorization and self._bearer_tenant(credentials.authorization) != tenant:
            raise Unauthenticated(
                "the bearer credential belongs to another tenant than the client certificate",
                cause="conflict",
            )
        return tenant

    def _is_admin(self, authorization: str | None) -> bool:
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not BEARER_TOKEN.fullmatch(token):
            return False
        digest = hashlib.sha256(token.encode()).hexdigest()
        # Every digest is compared, in constant time each.
        return sum(hmac.compare_digest(digest, known) for known in self.admin_digests) > 0

    def _bearer_tenant(self, authorization: str | None) -> Tenant:
        if not authorization:
            raise Unauthenticated(
                "no credential: send the header 'authorization: Bearer <API key>'",
                cause="missing",
            )
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not BEARER_TOKEN.fullmatch(token):
            raise Unauthenticated(
                "the authorization header must be exactly one 'Bearer <API key or JWT>'",
                cause="malformed",
            )
        if not token.startswith(f"{KEY_PREFIX}_") and token.count(".") == 2:
            return self._jwt_tenant(token)
        tenant = self.tenants.authenticate(token)
        if tenant is None:
            raise Unauthenticated(
                "unknown or revoked API key: check the key the platform team gave you",
                cause="unknown",
            )
        return tenant

    def _jwt_tenant(self, token: str) -> Tenant:
        if self.jwt is None:
            raise Unauthenticated(
                "this gateway does not accept JWTs: send an API key", cause="jwt_disabled"
            )
        return self._known(self.jwt.verify(token), "the JWT")

    def _known(self, tenant: Tenant, source: str) -> Tenant:
        if self.require_known_tenant and not self.tenants.knows(tenant.id):
            raise Unauthenticated(
                f"{source} names tenant {tenant.id!r}, which is not registered: "
                f"ask the platform team to run `otel-gateway tenants add {tenant.id} --no-key`",
                cause="unknown_tenant",
            )
        return tenant
