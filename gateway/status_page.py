"""Fleet status over HTTP: GET /api/fleet (JSON) and the /status page that shows it.

/api/fleet takes the same `authorization: Bearer <key>` as exports: a tenant's
key lists that tenant's agents, an admin key (its SHA-256 in
GATEWAY_ADMIN_KEY_SHA256) lists every tenant. The page itself holds no data: it
asks for a key in a form, keeps it in the tab's sessionStorage (gone when the
tab closes, never in a URL or a cookie) and calls /api/fleet with it. A strict
Content-Security-Policy allows only the gateway's own script, and the script
writes every value with textContent, so an agent's service name or version can
never run as code in an admin's browser.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Collection
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from gateway.app import Gateway
from gateway.auth import authorization_from
from gateway.errors import GatewayError
from gateway.fleet import AmbiguousAgent, FleetLookupError, FleetTracker, Sighting
from gateway.http_edge import credentials, retry_after

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


def is_admin(authorization: str | None, digests: Collection[str]) -> bool:
    """True when the bearer key's SHA-256 is one of the admin digests."""
    scheme, _, key = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip() or not digests:
        return False
    digest = hashlib.sha256(key.strip().encode()).hexdigest()
    # Every digest is compared, in constant time each.
    return sum(hmac.compare_digest(digest, known) for known in digests) > 0


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="seconds")


def fleet_document(
    fleet: FleetTracker, tenant_ids: Collection[str], now: float, admin: bool
) -> dict[str, Any]:
    """The /api/fleet answer: every tenant of `tenant_ids` with its agents."""
    tenants: dict[str, list[dict[str, Any]]] = {tenant_id: [] for tenant_id in tenant_ids}
    for row in fleet.sightings(None if admin else tenant_ids):
        tenants.setdefault(row.tenant_id, []).append(agent_document(fleet, row, now))
    return {
        "generated_at": _iso(now),
        "silent_after_seconds": fleet.silent_after,
        "scope": "all tenants" if admin else "tenant",
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
    }


def _error(status: int, error: str, message: str) -> JSONResponse:
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"error": error, "message": message}, status_code=status, headers=headers)


def _load_static() -> dict[str, bytes]:
    """The page's files; a missing one is logged and answered 404, never a failed start."""
    files = resources.files("gateway") / "static"
    static = {}
    for name in STATIC:
        try:
            static[name] = (files / name).read_bytes()
        except OSError as exc:
            logger.error(
                "status page file gateway/static/%s is not installed (%s): /status will not "
                "work; the package must ship gateway/static/* (package-data)",
                name,
                exc,
            )
    return static


def status_router(gateway: Gateway) -> APIRouter:
    """/api/fleet, /status and the page's script and style sheet."""
    router = APIRouter()
    static = _load_static()

    @router.get("/api/fleet")
    async def fleet(request: Request) -> JSONResponse:
        """The caller's agents (a tenant key) or every tenant's (an admin key)."""
        authorization = authorization_from(request.headers.getlist("authorization"))
        admin = is_admin(authorization, gateway.settings.admin_key_digests)
        if admin:
            tenant_ids: Collection[str] = set(gateway.tenants.table.tenants)
        else:
            try:
                tenant_ids = {gateway.authenticator.authenticate(credentials(request)).id}
            except GatewayError as exc:
                headers = {"WWW-Authenticate": "Bearer", "Cache-Control": "no-store"}
                delay = retry_after(exc)
                if delay is not None:
                    headers["Retry-After"] = delay
                return JSONResponse(
                    {"error": exc.reason, "message": exc.message},
                    status_code=exc.http_status,
                    headers=headers,
                )
        document = fleet_document(gateway.fleet, tenant_ids, gateway.fleet.clock(), admin)
        return JSONResponse(document, headers={"Cache-Control": "no-store"})

    @router.post("/api/fleet/forget")
    async def forget(request: Request) -> JSONResponse:
        """Retire agents at once (admin key): {"tenant_id": ..., "instances": [...]}."""
        authorization = authorization_from(request.headers.getlist("authorization"))
        if not is_admin(authorization, gateway.settings.admin_key_digests):
            if not authorization:
                return _error(401, "unauthenticated", "send an admin key as 'Bearer <key>'")
            return _error(
                403,
                "forbidden",
                "retiring agents takes an admin key (its SHA-256 in GATEWAY_ADMIN_KEY_SHA256)",
            )
        try:
            body = await request.json()
        except ValueError:
            body = None
        tenant_id = body.get("tenant_id") if isinstance(body, dict) else None
        instances = body.get("instances") if isinstance(body, dict) else None
        if (
            not isinstance(tenant_id, str)
            or not isinstance(instances, list)
            or not instances
            or not all(isinstance(name, str) and name for name in instances)
        ):
            return _error(
                400,
                "invalid_request",
                'send JSON {"tenant_id": "<tenant>", "instances": ["<instance id or prefix>"]}',
            )
        try:
            retired = gateway.fleet.forget(tenant_id, instances)
        except AmbiguousAgent as exc:
            return _error(409, "ambiguous_agent", str(exc))
        except FleetLookupError as exc:
            return _error(404, "unknown_agent", str(exc))
        gateway.fleet.save()
        now = gateway.fleet.clock()
        logger.info("retired %d agent(s) of tenant %s", len(retired), tenant_id)
        return JSONResponse(
            {
                "tenant_id": tenant_id,
                "retired": [agent_document(gateway.fleet, r, now) for r in retired],
            },
            headers={"Cache-Control": "no-store"},
        )

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
