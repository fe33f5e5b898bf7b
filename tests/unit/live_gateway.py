"""The gateway's real gRPC and HTTP servers on free ports, for tests of synchronous agent code.

The gateway runs on its own event loop in a background thread, so that `setup_metrics`,
`otel-agents check` and the SDK's exporters can block in the test's thread as they do in
an agent. It forwards to a fake Collector, whose requests show what was accepted and
under which tenant.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway_fixtures import FakeCollector, fake_collector, make_tenants

from gateway.app import Gateway
from gateway.grpc_server import create_grpc_server
from gateway.http_app import create_app
from gateway.server import _HttpServer, http_config
from gateway.settings import GatewaySettings


@dataclass
class LiveGateway:
    """Where the running gateway listens, its tenants' keys and what it forwarded."""

    grpc_port: int
    http_port: int
    scheme: str
    keys: dict[str, str]
    collector: FakeCollector = field(repr=False)
    gateway: Gateway | None = field(default=None, repr=False)
    """The running gateway's parts (read them from the test's thread only to look)."""

    @property
    def grpc_endpoint(self) -> str:
        """OTEL_EXPORTER_OTLP_ENDPOINT for OTLP/gRPC."""
        return f"{self.scheme}://127.0.0.1:{self.grpc_port}"

    @property
    def http_base(self) -> str:
        """OTEL_EXPORTER_OTLP_ENDPOINT for OTLP/HTTP (a base URL)."""
        return f"{self.scheme}://127.0.0.1:{self.http_port}"

    def latest(self, metric: str) -> dict[str, float]:
        """The last forwarded value of each tenant's point of `metric` (sum or gauge)."""
        values: dict[str, float] = {}
        for request in list(self.collector.received):
            for resource in request.resource_metrics:
                for scope in resource.scope_metrics:
                    for found in scope.metrics:
                        if found.name != metric:
                            continue
                        data: Any = getattr(found, found.WhichOneof("data") or "sum")
                        for point in data.data_points:
                            tenant = {kv.key: kv.value.string_value for kv in point.attributes}
                            values[tenant.get("tenant_id", "")] = point.as_int or point.as_double
        return values


@contextmanager
def live_gateway(tmp_path: Path, **overrides: Any) -> Iterator[LiveGateway]:
    """Tenants acme and globex; `overrides` are GatewaySettings (TLS files, say)."""
    keys = make_tenants(tmp_path / "tenants.json", "acme", "globex")
    ready = threading.Event()
    started: list[LiveGateway | BaseException] = []
    loop_stop: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def serve() -> None:
        async with fake_collector() as (collector, collector_port):
            settings = GatewaySettings(
                grpc_host="127.0.0.1",
                grpc_port=0,
                http_host="127.0.0.1",
                http_port=0,
                tenants_file=tmp_path / "tenants.json",
                collector_endpoint=f"127.0.0.1:{collector_port}",
                **({"metrics_port": None} | overrides),
            )
            gateway = Gateway.create(settings)
            grpc_server, grpc_port = create_grpc_server(gateway)
            await grpc_server.start()
            http_server = _HttpServer(http_config(settings, create_app(gateway)))
            http_task = asyncio.create_task(http_server.serve())
            while not http_server.started:
                await asyncio.sleep(0.01)
            http_port = http_server.servers[0].sockets[0].getsockname()[1]
            stop = asyncio.Event()
            loop_stop.append((asyncio.get_running_loop(), stop))
            scheme = "https" if settings.tls_cert_file else "http"
            started.append(LiveGateway(grpc_port, http_port, scheme, keys, collector, gateway))
            ready.set()
            try:
                await stop.wait()
            finally:
                http_server.should_exit = True
                await http_task
                await grpc_server.stop(None)
                await gateway.forwarder.close()

    def run() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:
            started.append(exc)
            ready.set()

    thread = threading.Thread(target=run, name="live-gateway", daemon=True)
    thread.start()
    assert ready.wait(30), "the gateway did not start within 30 s"
    result = started[0]
    if isinstance(result, BaseException):
        raise result
    try:
        yield result
    finally:
        loop, stop = loop_stop[0]
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        assert not thread.is_alive(), "the gateway did not stop within 30 s"
