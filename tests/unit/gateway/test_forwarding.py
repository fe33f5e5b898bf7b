"""Forwarding under load: coalesced exports, a bad request isolated, the in-flight bound."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from gateway_fixtures import (
    FakeCollector,
    counter_request,
    fake_collector,
    make_tenants,
    running_gateway,
)
from gateway_http_fixtures import http_gateway
from google.rpc.error_details_pb2 import RetryInfo  # type: ignore[import-untyped]
from middle import sample
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from gateway.enrich import may_claim_tenant, may_claim_tenant_steps


@dataclass
class GatedCollector(FakeCollector):
    """Answers once `gate` is open; refuses INVALID_ARGUMENT a request holding `poison`."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    poison: str = "poison.metric"

    async def Export(
        self, request: ExportMetricsServiceRequest, context: grpc.aio.ServicerContext
    ) -> ExportMetricsServiceResponse:
        await self.gate.wait()
        names = {
            m.name for rm in request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
        }
        if self.poison in names:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "fake collector: bad data")
        self.received.append(request)
        return ExportMetricsServiceResponse()


@asynccontextmanager
async def gated_collector() -> AsyncIterator[tuple[GatedCollector, int]]:
    collector = GatedCollector()
    async with fake_collector(collector) as (_, port):
        try:
            yield collector, port
        finally:
            collector.gate.set()  # no Export left waiting when the server stops


def _tenants_of(request: ExportMetricsServiceRequest) -> list[str]:
    return [
        kv.value.string_value
        for rm in request.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        for p in m.sum.data_points
        for kv in p.attributes
        if kv.key == "tenant_id"
    ]


def test_requests_arriving_together_leave_in_one_export(tmp_path: Path) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "acme", "globex")

    async def scenario() -> None:
        async with (
            gated_collector() as (collector, port),
            running_gateway(tmp_path / "tenants.json", port, forward_linger_seconds=0.2) as gw,
        ):
            collector.gate.set()
            tenants = ["acme", "globex"] * 5
            answers = await asyncio.gather(
                *(
                    gw.export(counter_request(value=i).SerializeToString(), keys[t])
                    for i, t in enumerate(tenants)
                )
            )
            assert len(answers) == 10
            assert len(collector.received) == 1
            assert sorted(_tenants_of(collector.received[0])) == sorted(tenants)
            assert gw.gateway.forwarder.exports == 1

    asyncio.run(scenario())


def test_a_request_the_collector_refuses_does_not_fail_the_others_in_its_export(
    tmp_path: Path,
) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "acme", "globex")

    async def scenario() -> None:
        async with (
            gated_collector() as (collector, port),
            running_gateway(tmp_path / "tenants.json", port, forward_linger_seconds=0.2) as gw,
        ):
            collector.gate.set()
            good = gw.export(counter_request(value=7).SerializeToString(), keys["acme"])
            bad = gw.export(
                counter_request(name="poison.metric").SerializeToString(), keys["globex"]
            )
            results = await asyncio.gather(good, bad, return_exceptions=True)
            assert isinstance(results[0], ExportMetricsServiceResponse)
            assert isinstance(results[1], grpc.aio.AioRpcError)
            assert results[1].code() == grpc.StatusCode.INVALID_ARGUMENT
            # The shared export was refused, then each request went alone.
            assert [_tenants_of(r) for r in collector.received] == [["acme"]]

    asyncio.run(scenario())


def test_a_stuck_collector_fills_the_in_flight_bound_and_the_rest_is_refused_retryably(
    tmp_path: Path,
) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "acme")

    async def scenario() -> None:
        async with (
            gated_collector() as (collector, port),
            running_gateway(
                tmp_path / "tenants.json",
                port,
                max_in_flight_requests=2,
                in_flight_tenant_share=1.0,  # one tenant may fill the bound here
                forward_linger_seconds=0.0,
            ) as gw,
        ):
            body = counter_request().SerializeToString()
            stuck = [asyncio.create_task(gw.export(body, keys["acme"])) for _ in range(2)]
            while gw.gateway.in_flight.requests < 2:
                await asyncio.sleep(0.01)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await gw.export(body, keys["acme"])
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_in_flight_requests=2" in (refused.value.details() or "")
            trailers = dict(refused.value.trailing_metadata() or ())
            delay = RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"]).retry_delay
            assert 1 <= delay.seconds + delay.nanos / 1e9 <= 3
            registry = gw.gateway.telemetry.registry
            assert sample(registry, "gateway_rejections_total", reason="overloaded") == 1

            collector.gate.set()  # the Collector recovers: the held requests complete
            await asyncio.gather(*stuck)
            assert gw.gateway.in_flight.requests == 0
            assert gw.gateway.in_flight.bytes == 0
            await gw.export(body, keys["acme"])
            # Every request arrived; the two held ones may have left as one export.
            forwarded = [rm for request in collector.received for rm in request.resource_metrics]
            assert len(forwarded) == 3

    asyncio.run(scenario())


def test_over_http_a_full_gateway_answers_503_with_retry_after(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with http_gateway(tmp_path, max_in_flight_requests=1) as http:
            http.gateway.in_flight.requests = 1  # one request is being handled
            answer = await http.client.post(
                "/v1/metrics",
                content=counter_request().SerializeToString(),
                headers={"content-type": "application/x-protobuf", **http.auth("acme")},
            )
            assert answer.status_code == 503
            assert 1 <= int(answer.headers["retry-after"]) <= 3
            assert "overloaded" in answer.text
            assert http.collector.received == []

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("key", "claims"),
    [("tenant_id", True), ("TENANT.ID", True), ("Tenant-Id", True), ("stream", False)],
)
def test_only_a_request_without_the_letters_of_tenant_skips_the_search_for_claims(
    key: str, claims: bool
) -> None:
    body = counter_request(point_attributes={key: "globex"}).SerializeToString()
    assert may_claim_tenant(body) is claims


@pytest.mark.parametrize("at", [0, 65536 - 6, 65536 - 3, 65536, 3 * 65536 + 100])
def test_the_search_for_claims_goes_in_steps_and_sees_a_word_across_two(at: int) -> None:
    body = bytes(at) + b"TeNaNt" + bytes(200_000)
    steps = may_claim_tenant_steps(body)
    taken, result = _driven(steps)
    assert result is True
    assert taken == at // 65536  # one step per 64 KiB looked through
    assert may_claim_tenant(bytes(300_000)) is False


def _driven(steps: Any) -> tuple[int, Any]:
    """Run `steps` to their end: how many pauses they made, and their result."""
    taken = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return taken, done.value
        taken += 1
