"""Runs the gateway: the gRPC server, the HTTP server and the tenants reloader."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

import uvicorn

from gateway.app import Gateway
from gateway.grpc_server import create_grpc_server
from gateway.http_app import create_app
from gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 5.0


class _HttpServer(uvicorn.Server):
    """uvicorn without its signal handling: it re-raises the signal once it has
    stopped, which would end the process before the gRPC server drains."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _reload_tenants(gateway: Gateway) -> None:
    while True:
        await asyncio.sleep(gateway.settings.tenants_reload_seconds)
        gateway.tenants.reload()


def _request_exit(http_server: uvicorn.Server, sig: signal.Signals) -> None:
    logger.info("received %s", sig.name)
    # A second signal while draining stops without waiting for open connections.
    http_server.force_exit = http_server.should_exit
    http_server.should_exit = True


async def serve(settings: GatewaySettings) -> None:
    """Serve until SIGINT or SIGTERM, then drain in-flight requests and stop."""
    gateway = Gateway.create(settings)
    grpc_server, grpc_port = create_grpc_server(gateway)
    http_server = _HttpServer(
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
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _request_exit, http_server, sig)
    try:
        await http_server.serve()  # returns once _request_exit has run
    finally:
        logger.info("gateway stopping")
        reloader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reloader
        await grpc_server.stop(SHUTDOWN_GRACE_SECONDS)
        await gateway.forwarder.close()
        gateway.telemetry.provider.shutdown()
        logger.info("gateway stopped")
