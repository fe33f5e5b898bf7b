"""GET /api/usage: each tenant's usage against its limits, for that tenant (or the admin).

The same `authorization: Bearer <key>` and authentication as /api/fleet
(gateway.fleet.api): a tenant's key answers for that tenant alone, an admin key
for every tenant. The counts are gateway.usage's; with a shared state store they
cover every process (see gateway.state_redis), so any replica answers the same.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request, Response

from gateway.app import Gateway
from gateway.auth import Admin
from gateway.errors import GatewayError
from gateway.fleet import STATUSES
from gateway.http_edge import credentials, json_answer, json_refusal
from gateway.ratelimit import API_READS_BURST, API_READS_PER_SECOND, RateLimiter, too_often
from gateway.usage import HOUR_MINUTES, RATE_WINDOW_SECONDS

NO_STORE = {"Cache-Control": "no-store"}
LIMITS = (
    "max_active_series",
    "rate_limit_requests_per_second",
    "rate_limit_burst",
    "max_data_points_per_request",
)
"""The limits (gateway.limits names) each tenant's usage is shown against."""


def usage_document(gateway: Gateway, tenant_ids: Collection[str], admin: bool) -> dict[str, Any]:
    """The /api/usage answer for `tenant_ids`."""
    fleet, usage = gateway.fleet, gateway.ingestor.usage
    now = fleet.clock()
    agents: dict[str, dict[str, int]] = {t: dict.fromkeys(STATUSES, 0) for t in tenant_ids}
    for row in fleet.sightings(tenant_ids):
        counts = agents.setdefault(row.tenant_id, dict.fromkeys(STATUSES, 0))
        counts[fleet.status(row, now)] += 1
    tenants = []
    for tenant_id in sorted(tenant_ids):
        limits = gateway.ingestor.limits.for_tenant(tenant_id)
        tenants.append(
            {
                "tenant_id": tenant_id,
                "active_series": gateway.ingestor.active_series(tenant_id),
                **usage.of(tenant_id),
                "limits": {name: getattr(limits, name) for name in LIMITS},
                "agents": agents[tenant_id],
            }
        )
    return {
        "generated_at": datetime.fromtimestamp(usage.clock(), UTC).isoformat(timespec="seconds"),
        "scope": "all tenants" if admin else "tenant",
        "rate_window_seconds": RATE_WINDOW_SECONDS,
        "hour_minutes": HOUR_MINUTES,
        "state_store": gateway.state.document(),
        "tenants": tenants,
    }


def usage_router(gateway: Gateway) -> APIRouter:
    """GET /api/usage."""
    router = APIRouter()
    reads = RateLimiter()

    @router.get("/api/usage")
    async def usage(request: Request) -> Response:
        """The caller's usage (a tenant key) or every tenant's (an admin key)."""
        try:
            caller = gateway.authenticator.authenticate(credentials(request.scope))
        except GatewayError as exc:
            return json_refusal(exc, NO_STORE).response()
        admin = isinstance(caller, Admin)
        if not isinstance(caller, Admin) and (
            wait := reads.take(caller.id, API_READS_PER_SECOND, API_READS_BURST)
        ):
            return json_refusal(too_often("/api/usage", wait), NO_STORE).response()
        tenant_ids: Collection[str] = (
            {caller.id}
            if not isinstance(caller, Admin)
            else (set(gateway.tenants.table.tenants) | gateway.ingestor.usage.tenants())
        )
        document = usage_document(gateway, tenant_ids, admin)
        return json_answer(document, headers=NO_STORE).response()

    return router
