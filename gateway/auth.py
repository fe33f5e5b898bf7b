"""Authentication at the edge: a bearer key in, a Tenant out."""

from __future__ import annotations

from gateway.errors import Unauthenticated
from gateway.tenants import Tenant, TenantRegistry


def authenticate(tenants: TenantRegistry, authorization: str | None) -> Tenant:
    """The tenant of an `authorization: Bearer <key>` header value; raise Unauthenticated."""
    if not authorization:
        raise Unauthenticated(
            "no credential: send the header 'authorization: Bearer <API key>'", cause="missing"
        )
    scheme, _, key = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthenticated(
            "the authorization header must be 'Bearer <API key>'", cause="malformed"
        )
    tenant = tenants.authenticate(key.strip())
    if tenant is None:
        raise Unauthenticated(
            "unknown or revoked API key: check the key the platform team gave you",
            cause="unknown",
        )
    return tenant
