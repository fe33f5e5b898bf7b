"""Property: whatever a client sends, the gateway answers with a documented status,
forwards only points stamped with the caller's tenant, and accounts for every point.

Random ExportMetricsServiceRequests (every point type, hostile names, keys and
values, NaN, huge and negative numbers, bad histogram shapes), random bytes and
corrupted encodings go through the real in-process gRPC gateway to a fake
Collector. One gateway serves all examples, so the series limit fills up along
the way and later examples exercise it too.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import grpc
import pytest
from gateway_fixtures import FakeCollector, RunningGateway, fake_collector, make_tenants
from gateway_fixtures import running_gateway as start_gateway
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from test_hostile_strategies import bodies

from gateway.validate import count_points

# HOSTILE_EXAMPLES=2000 for a longer hunt; the suite runs 400.
MAX_EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "400"))
LIMITS = {
    "rate_limit_requests_per_second": 0.0,  # off: one client sends every example at once
    "max_request_bytes": 6000,
    "max_data_points_per_request": 40,
    "max_active_series": 15,
    "max_attributes_per_point": 3,
    "max_attribute_value_length": 16,
}
DOCUMENTED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}
REFUSED_TOO_BIG = grpc.StatusCode.RESOURCE_EXHAUSTED

# Hundreds of generated requests through a real gRPC server: about 30 s.
pytestmark = pytest.mark.slow


@dataclass
class Harness:
    """One gateway and fake Collector on a loop that outlives each example."""

    loop: asyncio.AbstractEventLoop
    gateway: RunningGateway
    collector: FakeCollector
    keys: dict[str, str]
    examples: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """Started once for the module; prints how many examples ran."""
    tenants_file = tmp_path_factory.mktemp("hostile") / "tenants.json"
    keys = make_tenants(tenants_file, "acme", "globex")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # grpc.aio binds to the current loop
    stack = AsyncExitStack()

    async def start() -> tuple[FakeCollector, RunningGateway]:
        collector, port = await stack.enter_async_context(fake_collector())
        gateway = await stack.enter_async_context(start_gateway(tenants_file, port, **LIMITS))
        return collector, gateway

    collector, gateway = loop.run_until_complete(start())
    harness = Harness(loop, gateway, collector, keys)
    try:
        yield harness
    finally:
        for family in gateway.gateway.telemetry.registry.collect():
            for sample in family.samples:
                if sample.name == "gateway_data_points_total":
                    labels = sample.labels
                    what = labels.get("reason") or labels["outcome"]
                    harness.outcomes[f"points_{what}"] += int(sample.value)
        loop.run_until_complete(stack.aclose())
        loop.close()
        asyncio.set_event_loop(None)
        print(
            f"\nhostile property: {harness.examples} examples sent through the gateway: "
            + ", ".join(f"{k}={v}" for k, v in sorted(harness.outcomes.items()))
        )


def _parsed(body: bytes) -> ExportMetricsServiceRequest | None:
    request = ExportMetricsServiceRequest()
    try:
        request.ParseFromString(body)
    except Exception:
        return None
    request.DiscardUnknownFields()
    return request


def _forwarded_points(received: list[ExportMetricsServiceRequest]) -> Iterator[object]:
    for request in received:
        for resource_metrics in request.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    kind = metric.WhichOneof("data")
                    if kind is not None:
                        yield from getattr(metric, kind).data_points


@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,  # the same random run every time in CI, no stored examples
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
@given(body=bodies(), tenant=st.sampled_from(["acme", "globex"]))
def test_the_gateway_answers_every_input_and_accounts_for_every_point(
    harness: Harness, body: bytes, tenant: str
) -> None:
    harness.examples += 1
    harness.collector.received.clear()
    parsed = _parsed(body)

    async def call() -> tuple[grpc.StatusCode, int, str]:
        try:
            response = await harness.gateway.export(body, harness.keys[tenant])
        except grpc.aio.AioRpcError as error:
            return error.code(), 0, error.details() or ""
        partial = response.partial_success
        return grpc.StatusCode.OK, partial.rejected_data_points, partial.error_message

    status, rejected, message = harness.loop.run_until_complete(call())
    received = list(harness.collector.received)
    forwarded = list(_forwarded_points(received))

    assert status in DOCUMENTED | {REFUSED_TOO_BIG}, (status, message)
    if parsed is None and len(body) > LIMITS["max_request_bytes"]:
        # The size is checked before the body is decoded.
        assert status == REFUSED_TOO_BIG
        assert message.startswith("request_too_large: ")
    elif parsed is None:
        assert status == grpc.StatusCode.INVALID_ARGUMENT
        assert message.startswith("invalid_request: ")
    elif status == REFUSED_TOO_BIG:
        assert message.startswith(("request_too_large: ", "too_many_data_points: "))
        assert len(body) > LIMITS["max_request_bytes"] or (
            count_points(parsed) > LIMITS["max_data_points_per_request"]
        )
    harness.outcomes[status.name] += 1
    if status != grpc.StatusCode.OK:
        assert forwarded == []
        return
    assert parsed is not None
    assert len(forwarded) + rejected == count_points(parsed)
    # A refused resource or scope without points is named all the same.
    assert (rejected == 0) == (message == "" or message.startswith("0 of "))
    for point in forwarded:
        tenant_ids = [kv.value.string_value for kv in point.attributes if kv.key == "tenant_id"]
        assert tenant_ids == [tenant]
        assert len(point.attributes) <= LIMITS["max_attributes_per_point"] + 1


def test_the_property_ran_every_example(harness: Harness) -> None:
    assert harness.examples == MAX_EXAMPLES
