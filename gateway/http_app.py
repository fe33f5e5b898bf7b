"""HTTP server of the gateway: OTLP/HTTP, the legacy reporter, fleet status, health,
readiness and the gateway's own metrics."""

from __future__ import annotations

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.app import Gateway
from gateway.legacy import legacy_router
from gateway.otlp_http import otlp_router
from gateway.status_page import status_router


def create_app(gateway: Gateway) -> FastAPI:
    """The FastAPI application of one gateway."""
    app = FastAPI(title="otel-gateway", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(otlp_router(gateway))
    app.include_router(legacy_router(gateway))
    app.include_router(status_router(gateway))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up and serving."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Ready only when the Collector answers: otherwise exports would be refused."""
        if await gateway.forwarder.is_ready():
            return JSONResponse({"status": "ready"})
        return JSONResponse(
            {
                "status": "not ready",
                "reason": f"the Collector at {gateway.settings.collector_endpoint} does not answer",
            },
            status_code=503,
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        """The gateway's own metrics in the Prometheus text format."""
        return Response(generate_latest(gateway.telemetry.registry), media_type=CONTENT_TYPE_LATEST)

    return app
