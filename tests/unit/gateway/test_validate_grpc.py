"""Bad input through the real gRPC gateway: a status and a message, never a crash."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import grpc
import pytest
from gateway_fixtures import attributes_of, counter_request, fake_collector, make_tenants
from gateway_fixtures import running_gateway as gateway
from middle import sample
from opentelemetry.proto.metrics.v1 import metrics_pb2 as m


def _bad_utf8_body() -> bytes:
    body = counter_request(name="app.okname").SerializeToString()
    return body.replace(b"app.okname", b"app.\xff\xfename")


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field."""

    def varint(n: int) -> bytes:
        out = b""
        while n > 0x7F:
            out += bytes([n & 0x7F | 0x80])
            n >>= 7
        return out + bytes([n])

    return varint(number << 3 | 2) + varint(len(payload)) + payload


def _deeply_nested_body(depth: int = 200) -> bytes:
    # An attribute value nested 200 deep (AnyValue → KeyValueList → KeyValue → ...),
    # past upb's depth limit: refused at parse, no recursion in the gateway.
    value = _field(1, b"x")  # AnyValue.string_value
    for _ in range(depth):
        key_value = _field(1, b"k") + _field(2, value)
        value = _field(6, _field(1, key_value))  # AnyValue.kvlist_value.values
    point = _field(7, _field(1, b"deep") + _field(2, value))  # NumberDataPoint.attributes
    metric = _field(1, b"app.gauge") + _field(5, _field(1, point))  # name, gauge.data_points
    return _field(1, _field(2, _field(2, metric)))  # resource_metrics.scope_metrics.metrics


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"\xff\xff\xff not protobuf", "Wire format was corrupt"),
        (_bad_utf8_body(), "UTF-8"),
        (_deeply_nested_body(), "MaxDepth"),
    ],
    ids=["garbage", "bad-utf8", "nested-too-deep"],
)
def test_undecodable_bodies_are_invalid_argument_with_the_cause(
    tmp_path: Path, body: bytes, detail: str
) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "acme")

    async def scenario() -> None:
        async with (
            fake_collector() as (collector, port),
            gateway(tmp_path / "tenants.json", port) as gw,
        ):
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await gw.export(body, keys["acme"])
            assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert detail in (failure.value.details() or "")
            await gw.export(counter_request().SerializeToString(), keys["acme"])  # still serving
            assert len(collector.received) == 1

    asyncio.run(scenario())


def test_unknown_fields_are_stripped_before_forwarding(tmp_path: Path) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "acme")
    request = counter_request()
    point = request.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0]
    # Field 99 (varint) on the point and on the request: unknown to OTLP 1.x.
    point.MergeFromString(b"\x98\x06\x07")
    body = request.SerializeToString() + b"\x98\x06\x2a"

    async def scenario() -> None:
        async with (
            fake_collector() as (collector, port),
            gateway(tmp_path / "tenants.json", port) as gw,
        ):
            await gw.export(body, keys["acme"])
        [received] = collector.received
        assert b"\x98\x06" not in received.SerializeToString()
        forwarded = received.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0]
        assert attributes_of(forwarded.attributes) == {"tenant_id": "acme"}

    asyncio.run(scenario())


def test_bad_points_are_reported_in_partial_success_and_good_ones_forwarded(
    tmp_path: Path,
) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "acme")
    request = counter_request(value=4, point_attributes={"flow": 'a"b\\c\nd}{'})
    metrics = request.resource_metrics[0].scope_metrics[0].metrics
    metrics.append(m.Metric(name="app.gauge", gauge=m.Gauge(data_points=[m.NumberDataPoint()])))
    metrics[1].gauge.data_points[0].as_double = math.nan
    metrics.append(
        m.Metric(
            name="app.count",
            sum=m.Sum(
                data_points=[m.NumberDataPoint(as_int=-3)],
                is_monotonic=True,
                aggregation_temporality=2,
            ),
        )
    )

    async def scenario() -> None:
        async with (
            fake_collector() as (collector, port),
            gateway(tmp_path / "tenants.json", port) as gw,
        ):
            response = await gw.export(request.SerializeToString(), keys["acme"])
            partial = response.partial_success
            assert partial.rejected_data_points == 2
            assert partial.error_message.startswith("2 of 3 data points rejected; invalid_value: 2")
            registry = gw.gateway.telemetry.registry
            assert (
                sample(
                    registry,
                    "gateway_data_points_total",
                    outcome="rejected",
                    reason="invalid_value",
                )
                == 2
            )
            assert sample(registry, "gateway_data_points_total", outcome="forwarded") == 1
        [received] = collector.received
        [kept] = received.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points
        assert attributes_of(kept.attributes) == {"flow": 'a"b\\c\nd}{', "tenant_id": "acme"}

    asyncio.run(scenario())


def test_a_request_whose_points_are_all_dropped_is_not_forwarded(tmp_path: Path) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "acme")
    request = counter_request(name="bad name")

    async def scenario() -> None:
        async with (
            fake_collector() as (collector, port),
            gateway(tmp_path / "tenants.json", port) as gw,
        ):
            response = await gw.export(request.SerializeToString(), keys["acme"])
            assert response.partial_success.rejected_data_points == 1
            assert "metric_name_not_allowed" in response.partial_success.error_message
        assert collector.received == []

    asyncio.run(scenario())
