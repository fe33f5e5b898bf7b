"""Several Collectors as one forwarder: each agent's resources reach its own
Collector (gateway/shards.py), the answers merge, a failed part fails the request."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from gateway_fixtures import FakeCollector, counter_request, fake_collector
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from gateway.errors import CollectorUnavailable
from gateway.forwarder import Collectors
from gateway.shards import agent_key

pytestmark = pytest.mark.slow


def _agents(count: int) -> ExportMetricsServiceRequest:
    """One request holding `count` agents of tenant acme (as the gateway stamped them)."""
    request = ExportMetricsServiceRequest()
    for index in range(count):
        one = counter_request(
            resource_attributes={
                "service.name": "billing",
                "service.instance.id": f"i-{index}",
                "tenant_id": "acme",
            }
        )
        request.resource_metrics.extend(one.resource_metrics)
    return request


async def _with_collectors(
    count: int, scenario: object, refuse: int | None = None
) -> list[FakeCollector]:
    fakes = [FakeCollector() for _ in range(count)]
    if refuse is not None:
        fakes[refuse].status = grpc.StatusCode.UNAVAILABLE
    async with (
        fake_collector(fakes[0]) as (_, port_0),
        fake_collector(fakes[1]) as (_, port_1),
        fake_collector(fakes[2]) as (_, port_2),
    ):
        endpoints = tuple(f"127.0.0.1:{port}" for port in (port_0, port_1, port_2))
        collectors = Collectors.connect(endpoints, 5.0, 4 << 20)
        try:
            await scenario(collectors)  # type: ignore[operator]
        finally:
            await collectors.close()
    return fakes


def test_each_agent_reaches_the_collector_the_shard_map_picks_and_only_that_one() -> None:
    request = _agents(30)
    picked: dict[str, int] = {}

    async def send(collectors: Collectors) -> None:
        for rm in request.resource_metrics:
            picked[agent_key(rm.resource)] = collectors.shards.shard_of(agent_key(rm.resource))
        assert await collectors.is_ready()
        response = await collectors.forward(request)
        assert not response.HasField("partial_success")

    fakes = asyncio.run(_with_collectors(3, send))
    received = {
        agent_key(rm.resource): index
        for index, fake in enumerate(fakes)
        for forwarded in fake.received
        for rm in forwarded.resource_metrics
    }
    assert received == picked
    assert len(set(picked.values())) == 3  # 30 agents spread over all three


def test_a_part_that_cannot_be_stored_fails_the_request_for_a_retry() -> None:
    async def send(collectors: Collectors) -> None:
        assert not await collectors.is_ready()
        with pytest.raises(CollectorUnavailable):
            await collectors.forward(_agents(30))

    asyncio.run(_with_collectors(3, send, refuse=1))
