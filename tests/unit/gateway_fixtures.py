"""In-process gateway and a recording fake Collector for the gateway's unit tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as service_grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)

from gateway import tenants
from gateway.app import Gateway
from gateway.grpc_server import create_grpc_server
from gateway.settings import GatewaySettings
from gateway.state_redis import RedisState

EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"


@dataclass
class FakeCollector(service_grpc.MetricsServiceServicer):
    """Records every request; answers with `status` when it is set."""

    received: list[ExportMetricsServiceRequest] = field(default_factory=list)
    status: grpc.StatusCode | None = None

    async def Export(
        self, request: ExportMetricsServiceRequest, context: grpc.aio.ServicerContext
    ) -> ExportMetricsServiceResponse:
        if self.status is not None:
            await context.abort(self.status, "fake collector refusal")
        self.received.append(request)
        return ExportMetricsServiceResponse()


@asynccontextmanager
async def fake_collector(
    collector: FakeCollector | None = None,
) -> AsyncIterator[tuple[FakeCollector, int]]:
    """A running fake Collector (`collector`, or a plain one) and its port."""
    collector = collector or FakeCollector()
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    service_grpc.add_MetricsServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield collector, port
    finally:
        await server.stop(None)


@dataclass
class RunningGateway:
    """A gateway serving gRPC in this process, and a raw client channel to it."""

    gateway: Gateway
    channel: grpc.aio.Channel
    port: int

    async def export(self, body: bytes, key: str | None = None) -> ExportMetricsServiceResponse:
        """Call Export with raw request bytes and an optional bearer key."""
        call = self.channel.unary_unary(
            EXPORT,
            request_serializer=None,
            response_deserializer=ExportMetricsServiceResponse.FromString,
        )
        metadata = (("authorization", f"Bearer {key}"),) if key else ()
        response: ExportMetricsServiceResponse = await call(body, metadata=metadata, timeout=10)
        return response


def make_tenants(path: Path, *names: str) -> dict[str, str]:
    """Write a tenants file with one key per name; return name → key."""
    table = tenants.TenantTable()
    keys = {}
    for name in names:
        table, keys[name] = tenants.add_key(table, name)
    tenants.save(path, table)
    return keys


@asynccontextmanager
async def running_gateway(
    tenants_file: Path, collector_port: int, **overrides: object
) -> AsyncIterator[RunningGateway]:
    """A gateway on a free port forwarding to 127.0.0.1:`collector_port`."""
    settings = GatewaySettings(
        grpc_host="127.0.0.1",
        grpc_port=0,
        tenants_file=tenants_file,
        collector_endpoint=f"127.0.0.1:{collector_port}",
        forward_timeout_seconds=2.0,
        **overrides,  # type: ignore[arg-type]
    )
    gateway = Gateway.create(settings)
    server, port = create_grpc_server(gateway)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield RunningGateway(gateway, channel, port)
    finally:
        await channel.close()
        await server.stop(None)
        await gateway.forwarder.close()


def counter_request(
    name: str = "connector.bytes_sent",
    value: int = 10,
    point_attributes: dict[str, str] | None = None,
    resource_attributes: dict[str, str] | None = None,
    scope_attributes: dict[str, str] | None = None,
) -> ExportMetricsServiceRequest:
    """A request with one cumulative monotonic sum of one data point."""

    def kvs(attributes: dict[str, str] | None) -> list[KeyValue]:
        return [
            KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in (attributes or {}).items()
        ]

    point = NumberDataPoint(as_int=value, attributes=kvs(point_attributes))
    metric = Metric(
        name=name,
        unit="By",
        sum=Sum(data_points=[point], is_monotonic=True, aggregation_temporality=2),
    )
    request = ExportMetricsServiceRequest()
    resource_metrics = ResourceMetrics(scope_metrics=[ScopeMetrics(metrics=[metric])])
    resource_metrics.resource.attributes.extend(kvs(resource_attributes))
    resource_metrics.scope_metrics[0].scope.attributes.extend(kvs(scope_attributes))
    request.resource_metrics.append(resource_metrics)
    return request


def attributes_of(kvs: object) -> dict[str, str]:
    """A protobuf attribute list as a plain dict of string values."""
    return {kv.key: kv.value.string_value for kv in kvs}  # type: ignore[attr-defined]


def run(coro: object) -> object:
    """Run a coroutine to completion (the tests need no async plugin)."""
    return asyncio.run(coro)  # type: ignore[arg-type]


def free_port_now() -> int:
    """A port nothing listens on (free a moment ago)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def resource_only(attributes: dict[str, str], junk: int = 0) -> ExportMetricsServiceRequest:
    """A request of one resource and no points; `junk` more attributes of 300 bytes
    each (a bloated resource)."""
    request = ExportMetricsServiceRequest()
    resource = request.resource_metrics.add().resource
    resource.attributes.extend(
        KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in attributes.items()
    )
    resource.attributes.extend(
        KeyValue(key=f"junk.{n:05d}." + "k" * 100, value=AnyValue(string_value="v" * 200))
        for n in range(junk)
    )
    return request


def connector_resource(service: str, instance: str) -> dict[str, str]:
    """The resource attributes otel_agents gives a connector."""
    return {
        "service.name": service,
        "service.instance.id": instance,
        "agent.type": "connector",
        "host.name": "db-7",
    }


@asynccontextmanager
async def two_gateways(
    tmp_path: Path, url: str, counts_seconds: float = 0.0, **overrides: Any
) -> AsyncIterator[tuple[RunningGateway, RunningGateway, dict[str, str]]]:
    """Two in-process gateways sharing the store at `url`, before one fake Collector;
    tenants acme and globex (their keys). They exchange series counts and usage every
    `counts_seconds` (by default at every exchange: the tests exchange back to back)."""
    keys = make_tenants(tmp_path / "tenants.json", "acme", "globex")
    settings: dict[str, Any] = {"state_url": url, "state_timeout_seconds": 0.5} | overrides
    async with (
        fake_collector() as (_, port),
        running_gateway(
            tmp_path / "tenants.json", port, fleet_state_file=tmp_path / "a.json", **settings
        ) as one,
        running_gateway(
            tmp_path / "tenants.json", port, fleet_state_file=tmp_path / "b.json", **settings
        ) as two,
    ):
        for gw in (one, two):
            store(gw).counts_seconds = counts_seconds
        try:
            yield one, two, keys
        finally:
            for gw in (one, two):
                await gw.gateway.state.close()


def store(gw: RunningGateway) -> RedisState:
    """The gateway's shared state (it must have one)."""
    state = gw.gateway.state
    assert isinstance(state, RedisState)
    return state


async def exchange(*gateways: RunningGateway, rounds: int = 2) -> None:
    """Each gateway exchanges with the store, `rounds` times in turn."""
    for _ in range(rounds):
        for gw in gateways:
            assert await store(gw).exchange_once()
