"""The gRPC request path: authenticate, stamp the tenant, forward, refuse clearly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from gateway_fixtures import (
    attributes_of,
    counter_request,
    fake_collector,
    make_tenants,
    running_gateway,
)
from middle import sample
from prometheus_client import generate_latest


def test_a_valid_key_forwards_every_point_stamped_with_its_tenant(tmp_path: Path) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "acme", "globex")

    async def scenario() -> None:
        async with fake_collector() as (collector, port):
            async with running_gateway(tmp_path / "tenants.json", port) as gw:
                await gw.export(counter_request(value=42).SerializeToString(), keys["acme"])
                await gw.export(counter_request(value=7).SerializeToString(), keys["globex"])
            [first, second] = collector.received
            point = first.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0]
            assert point.as_int == 42
            assert attributes_of(point.attributes) == {"tenant_id": "acme"}
            other = second.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0]
            assert attributes_of(other.attributes) == {"tenant_id": "globex"}

    asyncio.run(scenario())


def test_a_client_claiming_another_tenant_lands_as_its_own(tmp_path: Path) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "acme", "globex")
    spoofed = counter_request(
        point_attributes={"tenant_id": "globex", "tenant.id": "globex", "kind": "x"},
        resource_attributes={"tenant_id": "globex", "service.name": "c"},
        scope_attributes={"Tenant-ID": "globex"},
    )

    async def scenario() -> None:
        async with fake_collector() as (collector, port):
            async with running_gateway(tmp_path / "tenants.json", port) as gw:
                await gw.export(spoofed.SerializeToString(), keys["acme"])
            [received] = collector.received
            resource_metrics = received.resource_metrics[0]
            assert attributes_of(resource_metrics.resource.attributes) == {
                "service.name": "c",
                "tenant_id": "acme",
            }
            assert attributes_of(resource_metrics.scope_metrics[0].scope.attributes) == {}
            point = resource_metrics.scope_metrics[0].metrics[0].sum.data_points[0]
            assert attributes_of(point.attributes) == {"kind": "x", "tenant_id": "acme"}

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("key", "cause"),
    [(None, "missing"), ("oga_00000000_not-a-real-key", "unknown"), ("garbage", "unknown")],
)
def test_missing_or_unknown_keys_are_unauthenticated_and_nothing_is_forwarded(
    tmp_path: Path, key: str | None, cause: str
) -> None:
    make_tenants(tmp_path / "tenants.json", "acme")

    async def scenario() -> None:
        async with fake_collector() as (collector, port):
            async with running_gateway(tmp_path / "tenants.json", port) as gw:
                with pytest.raises(grpc.aio.AioRpcError) as failure:
                    await gw.export(counter_request().SerializeToString(), key)
                assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "authorization" in (failure.value.details() or "").lower() or (
                    "key" in (failure.value.details() or "")
                )
                registry = gw.gateway.telemetry.registry
                assert sample(registry, "gateway_auth_failures_total", reason=cause) == 1
            assert collector.received == []

    asyncio.run(scenario())


def test_a_malformed_body_is_invalid_argument_and_counted(tmp_path: Path) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "acme")

    async def scenario() -> None:
        async with fake_collector() as (collector, port):
            async with running_gateway(tmp_path / "tenants.json", port) as gw:
                with pytest.raises(grpc.aio.AioRpcError) as failure:
                    await gw.export(b"\xff\xff\xff not protobuf", keys["acme"])
                assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "ExportMetricsServiceRequest" in (failure.value.details() or "")
                registry = gw.gateway.telemetry.registry
                assert (
                    sample(
                        registry,
                        "gateway_rejections_total",
                        tenant_id="acme",
                        reason="invalid_request",
                    )
                    == 1
                )
            assert collector.received == []

    asyncio.run(scenario())


def test_an_oversized_body_is_refused_with_the_setting_to_change(tmp_path: Path) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "acme")
    big = counter_request(name="x" * 5000).SerializeToString()

    async def scenario() -> None:
        async with fake_collector() as (collector, port):
            async with running_gateway(
                tmp_path / "tenants.json", port, max_request_bytes=4096
            ) as gw:
                with pytest.raises(grpc.aio.AioRpcError) as failure:
                    await gw.export(big, keys["acme"])
                assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "max_export_batch_size" in (failure.value.details() or "")
            assert collector.received == []

    asyncio.run(scenario())


def test_collector_down_is_unavailable_and_the_gateway_keeps_serving(tmp_path: Path) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "acme")

    async def scenario() -> None:
        async with fake_collector() as (collector, port):
            collector.status = grpc.StatusCode.UNAVAILABLE
            async with running_gateway(tmp_path / "tenants.json", port) as gw:
                with pytest.raises(grpc.aio.AioRpcError) as failure:
                    await gw.export(counter_request().SerializeToString(), keys["acme"])
                assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "retry" in (failure.value.details() or "")
                collector.status = None  # the Collector is back
                await gw.export(counter_request(value=5).SerializeToString(), keys["acme"])
            assert len(collector.received) == 1

    asyncio.run(scenario())


def test_a_collector_that_is_not_listening_is_unavailable(tmp_path: Path) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "acme")

    async def scenario() -> None:
        async with fake_collector() as (_, port):
            pass  # stopped: nothing listens on `port` any more
        async with running_gateway(tmp_path / "tenants.json", port) as gw:
            for _ in range(2):
                with pytest.raises(grpc.aio.AioRpcError) as failure:
                    await gw.export(counter_request().SerializeToString(), keys["acme"])
                assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
            assert not await gw.gateway.forwarder.is_ready(timeout_seconds=0.5)
            text = generate_latest(gw.gateway.telemetry.registry).decode()
            assert 'outcome="collector_unavailable"' in text

    asyncio.run(scenario())


def test_an_empty_request_is_accepted_and_not_forwarded(tmp_path: Path) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "acme")

    async def scenario() -> None:
        async with fake_collector() as (collector, port):
            async with running_gateway(tmp_path / "tenants.json", port) as gw:
                response = await gw.export(b"", keys["acme"])
                assert not response.HasField("partial_success")
            assert collector.received == []

    asyncio.run(scenario())
