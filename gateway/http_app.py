"""HTTP server of the gateway: OTLP/HTTP, the legacy reporter, fleet status, health,
readiness and the gateway's own metrics (unless they have their own port,
gateway/metrics_http.py).

The two data routes are plain ASGI apps in front of FastAPI (its routing, request
and response objects cost more per request than the whole chain); every other
route is FastAPI's.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from gateway import openfiles
from gateway.app import Gateway
from gateway.fleet.api import status_router
from gateway.http_edge import Receive, Scope, Send, json_answer
from gateway.legacy import PATH_PREFIX as LEGACY_PREFIX
from gateway.legacy import LegacyReportRoute
from gateway.metrics_http import metrics_router
from gateway.otlp_http import OtlpHttpExport
from gateway.usage_api import usage_router

OTLP_PATH = "/v1/metrics"


class GatewayHttpApp:
    """The ASGI application of one gateway's HTTP port."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.api = _api(gateway)
        self._otlp = OtlpHttpExport(gateway.chain)
        self._legacy = LegacyReportRoute(gateway.chain)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route a request: the data routes here, everything else to FastAPI."""
        if scope["type"] == "http":
            path: str = scope["path"]
            if path == OTLP_PATH:
                if scope["method"] == "POST":
                    return await self._otlp(scope, receive, send)
                return await _not_allowed(send)
            if path.startswith(LEGACY_PREFIX):
                tenant_id = path[len(LEGACY_PREFIX) :]
                if tenant_id and "/" not in tenant_id:
                    if scope["method"] == "POST":
                        return await self._legacy(scope, receive, send, tenant_id)
                    return await _not_allowed(send)
        await self.api(scope, receive, send)


async def _not_allowed(send: Send) -> None:
    await json_answer({"detail": "Method Not Allowed"}, 405, {"Allow": "POST"}).send(send)


def create_app(gateway: Gateway) -> GatewayHttpApp:
    """The HTTP application of one gateway."""
    return GatewayHttpApp(gateway)


def _api(gateway: Gateway) -> FastAPI:
    app = FastAPI(title="otel-gateway", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(status_router(gateway))
    app.include_router(usage_router(gateway))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up and serving."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Ready only when the Collector answers (otherwise exports would be refused) and
        open files leave room for more agents (a balancer then sends them elsewhere).
        Anyone may ask, so the answer names no internal address (GATEWAY_COLLECTOR_ENDPOINT
        is the operator's to look up)."""
        if (near := openfiles.near_limit()) is not None:
            return JSONResponse(
                {
                    "status": "not ready",
                    "reason": f"{near[0]} of {near[1]} open files in use: no room for more agents",
                },
                status_code=503,
            )
        if await gateway.forwarder.is_ready():
            return JSONResponse({"status": "ready"})
        several = len(gateway.settings.collector_endpoints) > 1
        return JSONResponse(
            {
                "status": "not ready",
                "reason": f"{'a' if several else 'the'} Collector does not answer",
            },
            status_code=503,
        )

    if gateway.settings.metrics_port is None:
        app.include_router(metrics_router(gateway))
    return app
