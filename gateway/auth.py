"""Authentication at the edge: credentials in, a Tenant out.

Transport adapters (gRPC, HTTP) collect the request's credentials into a
`Credentials` value and call `Authenticator.authenticate` once; everything after
it is given the resulting `Tenant`.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import Unauthenticated
from gateway.tenants import Tenant, TenantRegistry


@dataclass(frozen=True)
class Credentials:
    """What a request presents: its authorization header and where it comes from."""

    authorization: str | None
    peer: str = ""
    """The client's address as the transport reports it (for throttling and logs)."""


class Authenticator:
    """Turns credentials into a tenant, or raises Unauthenticated."""

    def __init__(self, tenants: TenantRegistry) -> None:
        self.tenants = tenants

    def authenticate(self, credentials: Credentials) -> Tenant:
        """The tenant of an `authorization: Bearer <key>` credential; raise Unauthenticated."""
        authorization = credentials.authorization
        if not authorization:
            raise Unauthenticated(
                "no credential: send the header 'authorization: Bearer <API key>'",
                cause="missing",
            )
        scheme, _, key = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated(
                "the authorization header must be 'Bearer <API key>'", cause="malformed"
            )
        tenant = self.tenants.authenticate(key.strip())
        if tenant is None:
            raise Unauthenticated(
                "unknown or revoked API key: check the key the platform team gave you",
                cause="unknown",
            )
        return tenant
