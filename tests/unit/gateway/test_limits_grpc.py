"""Per-tenant limits over gRPC: rate (with RetryInfo), size, data points, series."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from gateway_fixtures import counter_request, fake_collector, make_tenants, running_gateway
from google.rpc.error_details_pb2 import RetryInfo
from google.rpc.status_pb2 import Status
from middle import sample
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult

from gateway.chain import BodyPace
from gateway.grpc_server import MIB, RECEIVE_SECONDS_PER_MIB, MessageBody
from gateway.inflight import InFlight
from gateway.work import Work


def _points_request(points: int, name: str = "app.count") -> ExportMetricsServiceRequest:
    request = counter_request(name=name, value=1, point_attributes={"n": "0"})
    data_points = request.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points
    for n in range(1, points):
        point = data_points.add()
        point.CopyFrom(data_points[0])
        point.attributes[0].value.string_value = str(n)
    return request


def test_over_the_rate_is_resource_exhausted_with_retry_info_in_both_trailers(
    tmp_path: Path,
) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "acme", "globex")
    body = counter_request().SerializeToString()

    async def scenario() -> None:
        async with fake_collector() as (collector, port):
            async with running_gateway(
                tmp_path / "tenants.json",
                port,
                rate_limit_requests_per_second=0.5,
                rate_limit_burst=2,
            ) as gw:
                await gw.export(body, keys["acme"])
                await gw.export(body, keys["acme"])
                with pytest.raises(grpc.aio.AioRpcError) as failure:
                    await gw.export(body, keys["acme"])
                await gw.export(body, keys["globex"])  # its own bucket
                registry = gw.gateway.telemetry.registry
                assert sample(registry, "gateway_rejections_total", reason="rate_limited") == 1
            assert len(collector.received) == 3
        error = failure.value
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "rate_limit_requests_per_second" in (error.details() or "")
        trailers = dict(error.trailing_metadata() or ())
        info = RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"])
        assert info.retry_delay.seconds == 2  # one token at 0.5/s
        status = Status.FromString(trailers["grpc-status-details-bin"])
        assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        [detail] = status.details
        unpacked = RetryInfo()
        assert detail.Unpack(unpacked)
        assert unpacked == info

    asyncio.run(scenario())


@pytest.mark.slow
def test_the_python_otlp_exporter_waits_the_given_delay_and_then_succeeds(
    tmp_path: Path,
) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "acme")
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    provider.get_meter("t").create_counter("app.sent").add(5)
    data = reader.get_metrics_data()
    assert data is not None

    async def scenario() -> None:
        async with fake_collector() as (collector, port):
            # One request per 3 s: the second waits for a token that is ~3 s
            # away, far from the exporter's own first backoff of ~1 s.
            async with running_gateway(
                tmp_path / "tenants.json",
                port,
                rate_limit_requests_per_second=1 / 3,
                rate_limit_burst=1,
            ) as gw:
                exporter = OTLPMetricExporter(
                    endpoint=f"http://127.0.0.1:{gw.port}",
                    headers={"authorization": f"Bearer {keys['acme']}"},
                    timeout=10,
                )
                first = await asyncio.to_thread(exporter.export, data)
                started = time.monotonic()
                second = await asyncio.to_thread(exporter.export, data)
                elapsed = time.monotonic() - started
                exporter.shutdown()
                assert (first, second) == (MetricExportResult.SUCCESS,) * 2
                registry = gw.gateway.telemetry.registry
                # Exactly one refusal: the retry came after the delay, not before.
                assert sample(registry, "gateway_rejections_total", reason="rate_limited") == 1
                assert 2.9 <= elapsed < 4.5
            assert len(collector.received) == 2

    asyncio.run(scenario())


def test_too_many_data_points_refuses_the_whole_request(tmp_path: Path) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "acme")

    async def scenario() -> None:
        async with fake_collector() as (collector, port):
            async with running_gateway(
                tmp_path / "tenants.json", port, max_data_points_per_request=5
            ) as gw:
                await gw.export(_points_request(5).SerializeToString(), keys["acme"])
                with pytest.raises(grpc.aio.AioRpcError) as failure:
                    await gw.export(_points_request(6).SerializeToString(), keys["acme"])
                assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                details = failure.value.details() or ""
                assert details.startswith("too_many_data_points: 6 data points")
                assert "max_data_points_per_request" in details
                assert not failure.value.trailing_metadata()  # no RetryInfo: not retryable
                registry = gw.gateway.telemetry.registry
                rejected = sample(
                    registry,
                    "gateway_data_points_total",
                    outcome="rejected",
                    reason="too_many_data_points",
                )
                assert rejected == 6
            assert len(collector.received) == 1

    asyncio.run(scenario())


def test_over_the_series_limit_new_series_drop_and_known_ones_go_through(
    tmp_path: Path,
) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "acme", "globex")

    async def scenario() -> None:
        async with fake_collector() as (collector, port):
            async with running_gateway(tmp_path / "tenants.json", port, max_active_series=3) as gw:
                first = await gw.export(_points_request(2).SerializeToString(), keys["acme"])
                assert not first.HasField("partial_success")
                response = await gw.export(_points_request(5).SerializeToString(), keys["acme"])
                partial = response.partial_success
                assert partial.rejected_data_points == 2
                assert partial.error_message.startswith("2 of 5 data points rejected; ")
                assert "series_limit: 2" in partial.error_message
                assert "max_active_series" in partial.error_message
                other = await gw.export(_points_request(3).SerializeToString(), keys["globex"])
                assert not other.HasField("partial_success")
                registry = gw.gateway.telemetry.registry
                assert (
                    sample(
                        registry,
                        "gateway_data_points_total",
                        tenant_id="acme",
                        outcome="rejected",
                        reason="series_limit",
                    )
                    == 2
                )
                assert (
                    sample(
                        registry,
                        "gateway_rejections_total",
                        tenant_id="acme",
                        reason="series_limit",
                    )
                    == 1
                )
                assert sample(registry, "gateway_active_series", tenant_id="acme") == 3
            forwarded = [
                len(r.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points)
                for r in collector.received
            ]
            assert forwarded == [2, 3, 3]

    asyncio.run(scenario())


def test_a_per_tenant_override_lowers_the_request_size_for_that_tenant_only(
    tmp_path: Path,
) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "acme", "globex")
    limits_file = tmp_path / "limits.yaml"
    limits_file.write_text("tenants:\n  acme:\n    max_request_bytes: 100\n")
    body = counter_request(name="a" * 200).SerializeToString()

    async def scenario() -> None:
        async with fake_collector() as (collector, port):
            async with running_gateway(
                tmp_path / "tenants.json", port, limits_file=limits_file
            ) as gw:
                with pytest.raises(grpc.aio.AioRpcError) as failure:
                    await gw.export(body, keys["acme"])
                assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "max_request_bytes" in (failure.value.details() or "")
                await gw.export(body, keys["globex"])
            assert len(collector.received) == 1

    asyncio.run(scenario())


def test_the_copy_of_a_large_message_is_charged_to_its_tenant() -> None:
    """grpcio copies a message into Python bytes on the event loop, in one go,
    before the handler sees it: the request's work (its tenant's budget) pays."""

    class Context:
        async def read(self) -> bytes:
            return bytes(4 * MIB)

    async def scenario() -> float:
        work = Work()
        lease = InFlight(max_requests=10, max_bytes=64 * MIB).enter(0, "acme")
        body = MessageBody(Context())  # type: ignore[arg-type]
        message = await body.read(lease, 8 * MIB, BodyPace(), work, 1)
        assert len(message) == 4 * MIB
        return work.seconds

    assert asyncio.run(scenario()) >= 4 * RECEIVE_SECONDS_PER_MIB
