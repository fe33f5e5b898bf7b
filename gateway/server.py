"""Runs the gateway: the gRPC server, the HTTP server and the file watcher."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import ssl
from collections.abc import Iterator, MutableMapping
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway import openfiles
from gateway.app import Gateway
from gateway.chain import Outcome
from gateway.errors import GatewayError
from gateway.fleet import series as fleet_series
from gateway.grpc_server import create_grpc_server
from gateway.http_app import GatewayHttpApp, create_app
from gateway.http_connections import bounded_protocol
from gateway.metrics_http import metrics_app, warn_if_open
from gateway.peers import PeerCounts
from gateway.settings import GatewaySettings
from gateway.tls import read_tls_file

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 5.0


class _HttpServer(uvicorn.Server):
    """uvicorn without its signal handling: it re-raises the signal once it has
    stopped, which would end the process before the gRPC server drains."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ClientCertificateH11Protocol(H11Protocol):
    """uvicorn's h11 protocol that also fills the ASGI `tls` extension's
    `client_cert_chain` (uvicorn leaves it out): the peer certificate the
    handshake verified, PEM, for `gateway.tls.client_certificate_from_asgi`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Give the app of a connection that presented a certificate that certificate."""
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der:
            self.app = _with_client_certificate(self.app, ssl.DER_cert_to_PEM_cert(der))


def _with_client_certificate(app: Any, pem: str) -> Any:
    async def app_with_tls(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        tls = {
            "server_cert": None,
            "client_cert_chain": [pem],
            "client_cert_name": None,
            "client_cert_error": None,
            "tls_version": None,
            "cipher_suite": None,
        }
        await app(
            {**scope, "extensions": {**(scope.get("extensions") or {}), "tls": tls}}, receive, send
        )

    return app_with_tls


def uvicorn_tls_options(settings: GatewaySettings) -> dict[str, Any]:
    """`uvicorn.Config` arguments for TLS (none when it is off); with mTLS, client
    certificates are required and reach the app in the ASGI scope."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return {}
    # Read now for an error naming the setting rather than uvicorn's at bind time.
    read_tls_file(settings.tls_cert_file, "GATEWAY_TLS_CERT_FILE")
    read_tls_file(settings.tls_key_file, "GATEWAY_TLS_KEY_FILE")
    options: dict[str, Any] = {
        "ssl_certfile": str(settings.tls_cert_file),
        "ssl_keyfile": str(settings.tls_key_file),
    }
    if settings.tls_client_ca_file is not None:
        read_tls_file(settings.tls_client_ca_file, "GATEWAY_TLS_CLIENT_CA_FILE")
        options |= {
            "ssl_ca_certs": str(settings.tls_client_ca_file),
            "ssl_cert_reqs": ssl.CERT_REQUIRED,
            "http": ClientCertificateH11Protocol,
        }
    return options


def http_config(settings: GatewaySettings, app: Any) -> uvicorn.Config:
    """The uvicorn configuration of the HTTP port (TLS per the settings; connections
    capped per address and given a deadline for their headers)."""
    tls = uvicorn_tls_options(settings)

    def count(error: GatewayError) -> None:
        if isinstance(app, GatewayHttpApp):  # the gateway's own counters
            app.gateway.chain.count("http", Outcome(error=error))

    tls["http"] = bounded_protocol(
        tls.get("http", H11Protocol),
        PeerCounts(
            settings.max_http_connections_per_peer,
            "HTTP connections",
            "max_http_connections_per_peer",
        ),
        settings.http_header_timeout_seconds,
        count,
    )
    return uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,  # no "server: uvicorn" on every answer
        **tls,
    )


def _request_exit(servers: list[_HttpServer], sig: signal.Signals) -> None:
    logger.info("received %s", sig.name)
    for server in servers:
        # A second signal while draining stops without waiting for open connections.
        server.force_exit = server.should_exit
        server.should_exit = True


def metrics_config(settings: GatewaySettings, app: Any) -> uvicorn.Config:
    """The uvicorn configuration of the separate /metrics port (GATEWAY_METRICS_PORT)."""
    return uvicorn.Config(
        app,
        host=settings.metrics_host,
        port=settings.metrics_port or 0,
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
    )


def worker_settings(settings: GatewaySettings, index: int) -> GatewaySettings:
    """A worker's settings (gateway.workers): the shared ports, its own /metrics port."""
    metrics_port = settings.metrics_port
    if metrics_port:
        metrics_port += index
    return settings.model_copy(
        update={"grpc_reuse_port": True, "metrics_port": metrics_port, "workers": 1}
    )


def shared_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket other workers may bind too (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def serve(settings: GatewaySettings, worker: int | None = None) -> None:
    """Serve until SIGINT or SIGTERM, then drain in-flight requests and stop.
    `worker`: this process is that worker of several sharing the ports (gateway.workers)."""
    if worker is not None:
        settings = worker_settings(settings, worker)
    openfiles.raise_soft_limit()  # before any socket: each agent's connection takes one
    gateway = Gateway.create(settings)
    grpc_server, grpc_port = create_grpc_server(gateway)
    http_server = _HttpServer(http_config(settings, create_app(gateway)))
    servers = [http_server]
    if settings.metrics_port is not None:
        servers.append(_HttpServer(metrics_config(settings, metrics_app(gateway))))
    warn_if_open(gateway)
    # What start-up built lives as long as the process: out of the collector's way,
    # so that its full passes do not walk it again and again (pauses, not leaks).
    gc.collect()
    gc.freeze()
    await grpc_server.start()
    # Tenants, limits and JWT keys: re-read when their files change.
    reloader = asyncio.create_task(gateway.watcher.run())
    # Each agent's last-seen series, to its Collector.
    publisher = asyncio.create_task(
        fleet_series.publish(
            gateway.fleet,
            gateway.forwarder,
            settings.fleet_series_interval_seconds,
            f"{socket.gethostname()}:{grpc_port}",
            gateway.state.owns,
        )
    )
    # The fleet, rate budgets, series counts and throttle other processes share.
    exchanger = asyncio.create_task(gateway.state.run())
    # The fleet-state file, for the next start.
    saver = asyncio.create_task(gateway.fleet.keep_saved())
    logger.info(
        "gateway listening: OTLP/gRPC on %s:%d, HTTP%s on %s:%d, forwarding to %s",
        settings.grpc_host,
        grpc_port,
        "S" if settings.tls_cert_file else "",
        settings.http_host,
        settings.http_port,
        settings.collector_endpoint,
    )
    if settings.metrics_port is not None:
        logger.info("/metrics on %s:%d", settings.metrics_host, settings.metrics_port)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _request_exit, servers, sig)
    try:
        # Each returns once _request_exit has run.
        sockets = (
            None if worker is None else [shared_socket(settings.http_host, settings.http_port)]
        )
        await asyncio.gather(
            http_server.serve(sockets=sockets), *(server.serve() for server in servers[1:])
        )
    finally:
        logger.info("gateway stopping")
        for task in (reloader, publisher, exchanger, saver):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await grpc_server.stop(SHUTDOWN_GRACE_SECONDS)
        await gateway.forwarder.close()
        await gateway.state.close()
        gateway.fleet.save()  # the last-seen table, for the next start
        gateway.telemetry.provider.shutdown()
        logger.info("gateway stopped")
