"""The fleet's per-agent series: under each agent's own resource, sliced, and sent for
a stopped or retired agent only as long as its running series can linger."""

from __future__ import annotations

from gateway_fixtures import attributes_of

from gateway.fleet import Sighting
from gateway.fleet_series import LINGER_SECONDS, SLICE, fleet_requests

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
