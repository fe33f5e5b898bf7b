"""The fleet's per-agent series: under each agent's own resource, sliced, and sent for
a stopped or retired agent only as long as its running series can linger."""

from __future__ import annotations

import asyncio
import contextlib
import time

from gateway_fixtures import attributes_of
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from gateway.errors import CollectorUnavailable
from gateway.fleet import Sighting
from gateway.fleet.series import LINGER_SECONDS, SLICE, fleet_requests, publish

NOW = 1_700_000_000.0


def _row(kind: str, instance: str, state: str = "running", since: float = NOW - 600) -> Sighting:
    return Sighting(
        tenant_id="acme",
        agent_type=kind,
        service=f"{kind}-svc",
        instance=instance,
        version="1.2",
        first_seen=NOW - 3600,
        last_seen=NOW - 42,
        host="db-7",
        state=state,  # type: ignore[arg-type]
        silence_from=NOW - 42,
        state_since=since,
        resource={
            "service.name": f"{kind}-svc",
            "service.instance.id": instance,
            "host.name": "db-7",
            "agent.type": kind,
            "tenant_id": "acme",
        },
    )


def test_each_agent_gets_two_gauges_under_its_own_resource() -> None:
    [request] = fleet_requests([_row("connector", "c-1"), _row("etl", "e-1")], NOW)
    series = {}
    for resource_metrics in request.resource_metrics:
        resource = attributes_of(resource_metrics.resource.attributes)
        (scope,) = resource_metrics.scope_metrics
        assert scope.scope.name == "otel_agents.gateway"
        for metric in scope.metrics:
            (point,) = metric.gauge.data_points
            assert metric.unit == "s"
            assert attributes_of(point.attributes) == {
                "tenant_id": "acme",
                "state": "running",
                "host": "db-7",
                "version": "1.2",
            }
            series[(resource["service.instance.id"], metric.name)] = point.as_double
        assert resource["agent.type"] in ("connector", "etl")
    assert series == {
        ("c-1", "connector.last_seen"): 42.0,
        ("c-1", "connector.last_seen.timestamp"): NOW - 42,
        ("e-1", "agent.last_seen"): 42.0,
        ("e-1", "agent.last_seen.timestamp"): NOW - 42,
    }


def test_other_clients_get_none_and_ended_agents_only_while_their_old_series_linger() -> None:
    rows = [
        _row("other", "js-1"),
        _row("connector", "stopped-now", "stopped", since=NOW - 10),
        _row("connector", "retired-now", "retired", since=NOW - 10),
        _row("connector", "stopped-long-ago", "stopped", since=NOW - LINGER_SECONDS - 1),
        _row("connector", "retired-long-ago", "retired", since=NOW - LINGER_SECONDS - 1),
    ]
    [request] = fleet_requests(rows, NOW)
    sent = {
        attributes_of(rm.resource.attributes)["service.instance.id"]: attributes_of(
            rm.scope_metrics[0].metrics[0].gauge.data_points[0].attributes
        )["state"]
        for rm in request.resource_metrics
    }
    assert sent == {"stopped-now": "stopped", "retired-now": "retired"}


def test_requests_carry_at_most_a_slice_of_agents() -> None:
    rows = [_row("connector", f"c-{n}") for n in range(2 * SLICE + 7)]
    sizes = [len(r.resource_metrics) for r in fleet_requests(rows, NOW)]
    assert sizes == [SLICE, SLICE, 7]
    assert list(fleet_requests([], NOW)) == []


def test_each_gateway_process_names_itself_on_its_points() -> None:
    [request] = fleet_requests([_row("connector", "c-1")], NOW, gateway="gw-2:4317")
    point = request.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points[0]
    assert attributes_of(point.attributes)["gateway"] == "gw-2:4317"


class _Forwarder:
    """Records what it is sent; fails the first `failures` forwards."""

    def __init__(self, failures: int = 0) -> None:
        self.sent: list[ExportMetricsServiceRequest] = []
        self.failures = failures

    async def forward(self, request: ExportMetricsServiceRequest) -> ExportMetricsServiceResponse:
        if self.failures:
            self.failures -= 1
            raise CollectorUnavailable("down")
        self.sent.append(request)
        return ExportMetricsServiceResponse()


class _Fleet:
    def __init__(self, rows: list[Sighting]) -> None:
        self._rows = rows

    def rows(self) -> list[Sighting]:
        return self._rows


def test_publish_sends_every_slice_each_interval_and_outlives_a_collector_outage() -> None:
    rows = [_row("connector", f"c-{i}") for i in range(SLICE + 1)]
    forwarder = _Forwarder(failures=1)

    async def run_for_two_intervals() -> None:
        task = asyncio.create_task(publish(_Fleet(rows), forwarder, 0.05, "gw:1"))  # type: ignore[arg-type]
        deadline = time.monotonic() + 10.0  # a loaded machine may take longer than 0.1 s
        while len(forwarder.sent) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(run_for_two_intervals())
    # The first round lost its first slice to the outage; the second sent both.
    assert [len(r.resource_metrics) for r in forwarder.sent[:3]] == [1, SLICE, 1]
