"""Fleet status over HTTP: GET /api/fleet (JSON) and the /status page that shows it.

/api/fleet takes the same `authorization: Bearer <key>` as exports, and the same
authentication (gateway.auth): a tenant's key lists that tenant's agents, an
admin key (its SHA-256 in GATEWAY_ADMIN_KEY_SHA256) lists every tenant and alone
may retire agents. The page itself holds no data: it asks for a key in a form,
keeps it in the tab's sessionStorage (gone when the tab closes, never in a URL or
a cookie) and calls /api/fleet with it. A strict Content-Security-Policy allows only
the gateway's own script, and the script writes every value with textContent, so an
agent's service name or version can never run as code in an admin's browser.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request, Response

from gateway.app import Gateway
from gateway.auth import Admin, Principal
from gateway.errors import (
    AmbiguousPrefix,
    Forbidden,
    GatewayError,
    InvalidRequest,
    UnknownAgent,
)
from gateway.fleet import AmbiguousAgent, FleetLookupError, FleetTracker, Sighting
from gateway.http_edge import credentials, json_answer, json_refusal
from gateway.ratelimit import API_READS_BURST, API_READS_PER_SECOND, RateLimiter, too_often

logger = logging.getLogger(__name__)

STATIC = {
    "status.html": "text/html; charset=utf-8",
    "status.js": "text/javascript; charset=utf-8",
    "status.css": "text/css; charset=utf-8",
}
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="seconds")


def fleet_document(
    fleet: FleetTracker,
    tenant_ids: Collection[str],
    now: float,
    admin: bool,
    store: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The /api/fleet answer: every tenant of `tenant_ids` with its agents, and what
    the state store says of the view (`partial` when other processes' rows may be
    missing or stale: gateway.state)."""
    tenants: dict[str, list[dict[str, Any]]] = {tenant_id: [] for tenant_id in tenant_ids}
    for row in fleet.sightings(None if admin else tenant_ids):
        tenants.setdefault(row.tenant_id, []).append(agent_document(fleet, row, now))
    return {
        "generated_at": _iso(now),
        "silent_after_seconds": fleet.silent_after,
        "scope": "all tenants" if admin else "tenant",
        "state_store": store or {"store": "memory", "up": True, "replicas": 1, "partial": False},
        "tenants": [
            {"tenant_id": tenant_id, "agents": agents}
            for tenant_id, agents in sorted(tenants.items())
        ],
    }


def agent_document(fleet: FleetTracker, row: Sighting, now: float) -> dict[str, Any]:
    """One agent as /api/fleet shows it."""
    return {
        "type": row.agent_type,
        "instance": row.instance,
        "service": row.service,
        "version": row.version,
        "host": row.host,
        "first_seen": _iso(row.first_seen),
        "last_seen": _iso(row.last_seen),
        "seconds_since": round(max(0.0, now - row.last_seen), 1),
        "status": fleet.status(row, now),
        "over_budget": fleet.over_budget(row, now),
        "clash": fleet.clashing(row, now),
        "clash_hosts": list(row.clash_hosts) if fleet.clashing(row, now) else [],
    }


NO_STORE = {"Cache-Control": "no-store"}


def _refused(error: GatewayError) -> Response:
    return json_refusal(error, NO_STORE).response()


def _load_static() -> dict[str, bytes]:
    """The page's files; a missing one is logged and answered 404, never a failed start."""
    files = resources.files("gateway.fleet") / "static"
    static = {}
    for name in STATIC:
        try:
            static[name] = (files / name).read_bytes()
        except OSError as exc:
            logger.error(
                "status page file gateway/fleet/static/%s is not installed (%s): /status will not "
                "work; the package must ship gateway/fleet/static/* (package-data)",
                name,
                exc,
            )
    return static


def _forget_request(body: bytes) -> tuple[str, list[str]]:
    """The tenant and instances of a forget request; InvalidRequest saying the form."""
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    tenant_id = document.get("tenant_id") if isinstance(document, dict) else None
    instances = document.get("instances") if isinstance(document, dict) else None
    if (
        not isinstance(tenant_id, str)
        or not isinstance(instances, list)
        or not instances
        or not all(isinstance(name, str) and name for name in instances)
    ):
        raise InvalidRequest(
            'send JSON {"tenant_id": "<tenant>", "instances": ["<instance id or prefix>"]}'
        )
    return tenant_id, instances


def status_router(gateway: Gateway) -> APIRouter:
    """/api/fleet, /status and the page's script and style sheet."""
    router = APIRouter()
    static = _load_static()
    reads = RateLimiter()

    def principal(request: Request) -> Principal:
        return gateway.authenticator.authenticate(credentials(request.scope))

    @router.get("/api/fleet")
    async def fleet(request: Request) -> Response:
        """The caller's agents (a tenant key) or every tenant's (an admin key)."""
        try:
            caller = principal(request)
        except GatewayError as exc:
            return _refused(exc)
        admin = isinstance(caller, Admin)
        if not isinstance(caller, Admin) and (
            wait := reads.take(caller.id, API_READS_PER_SECOND, API_READS_BURST)
        ):
            return _refused(too_often("/api/fleet", wait))
        tenant_ids: Collection[str] = (
            set(gateway.tenants.table.tenants) if isinstance(caller, Admin) else {caller.id}
        )
        document = fleet_document(
            gateway.fleet, tenant_ids, gateway.fleet.clock(), admin, gateway.state.document()
        )
        return json_answer(document, headers=NO_STORE).response()

    @router.post("/api/fleet/forget")
    async def forget(request: Request) -> Response:
        """Retire agents at once (admin key): {"tenant_id": ..., "instances": [...]}."""
        try:
            if not isinstance(principal(request), Admin):
                raise Forbidden(
                    "retiring agents takes an admin key (its SHA-256 in "
                    "GATEWAY_ADMIN_KEY_SHA256), not a tenant's"
                )
            tenant_id, instances = _forget_request(await request.body())
            try:
                retired = gateway.fleet.forget(tenant_id, instances)
            except AmbiguousAgent as exc:
                raise AmbiguousPrefix(str(exc)) from exc
            except FleetLookupError as exc:
                raise UnknownAgent(str(exc)) from exc
        except GatewayError as exc:
            return _refused(exc)
        await gateway.fleet.save_in_steps()  # retired for good, even after a restart
        now = gateway.fleet.clock()
        logger.info("retired %d agent(s) of tenant %s", len(retired), tenant_id)
        document = {
            "tenant_id": tenant_id,
            "retired": [agent_document(gateway.fleet, r, now) for r in retired],
        }
        return json_answer(document, headers=NO_STORE).response()

    @router.get("/status")
    async def page() -> Response:
        """The fleet status page (asks for a key, then shows /api/fleet)."""
        if "status.html" not in static:
            return Response("the status page is not installed", status_code=404)
        return Response(
            static["status.html"], media_type=STATIC["status.html"], headers=PAGE_HEADERS
        )

    @router.get("/status/{name}")
    async def asset(name: str) -> Response:
        """The page's script and style sheet."""
        if name not in static or name == "status.html":
            return Response(status_code=404)
        return Response(static[name], media_type=STATIC[name], headers=PAGE_HEADERS)

    return router
