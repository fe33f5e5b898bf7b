"""Runs the gateway: the gRPC server, the HTTP server and the tenants reloader."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import uvicorn

from gateway.app import Gateway
from gateway.grpc_server import create_grpc_server
from gateway.http_app import create_app
from gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 5.0


async def _reload_tenants(gateway: Gateway) -> None:
    while True:
        await asyncio.sleep(gateway.settings.tenants_reload_seconds)
        gateway.tenants.reload()


async def serve(settings: GatewaySettings) -> None:
    """Serve until SIGINT or SIGTERM, then drain in-flight requests and stop."""
    gateway = Gateway.create(settings)
    grpc_server, grpc_port = create_grpc_server(gateway)
    http_server = uvicorn.Server(
        uvicorn.Config(
            create_app(gateway),
            host=settings.http_host,
            port=settings.http_port,
            log_config=None,
            access_log=False,
            lifespan="off",
        )
    )
    await grpc_server.start()
    reloader = asyncio.create_task(_reload_tenants(gateway))
    logger.info(
        "gateway listening: OTLP/gRPC on %s:%d, HTTP on %s:%d, forwarding to %s",
        settings.grpc_host,
        grpc_port,
        settings.http_host,
        settings.http_port,
        settings.collector_endpoint,
    )
    try:
        # uvicorn owns the signal handling: serve() returns on SIGINT/SIGTERM.
        await http_server.serve()
    finally:
        logger.info("gateway stopping")
        reloader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reloader
        await grpc_server.stop(SHUTDOWN_GRACE_SECONDS)
        await gateway.forwarder.close()
        gateway.telemetry.provider.shutdown()
        logger.info("gateway stopped")
