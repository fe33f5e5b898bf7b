"""One tenant's agents cannot stop another's last-seen series: the fleet keeps a bounded
resource per agent, and its exports are per tenant and bounded in size."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

from gateway_fixtures import (
    FakeCollector,
    attributes_of,
    connector_resource,
    fake_collector,
    make_tenants,
    resource_only,
    run,
    running_gateway,
)

from gateway.fleet import FleetTracker
from gateway.fleet.resource import MAX_VALUE_CHARS
from gateway.fleet.series import LINGER_SECONDS, MAX_REQUEST_BYTES, fleet_requests, publish
from gateway.ingest import Forwarder
from gateway.tenants import Tenant

BLOAT = 25_000
"""Junk attributes of a bloated resource (~320 bytes each: an 8 MB request, and 6 MB
once the old fleet cut values to 128 characters)."""


def _last_seen(collector: FakeCollector) -> dict[str, set[int]]:
    """Per instance id, the times (ns) of the fleet series the Collector received."""
    seen: dict[str, set[int]] = {}
    for request in collector.received:
        for rm in request.resource_metrics:
            for metric in rm.scope_metrics[0].metrics:
                if metric.name == "connector.last_seen":
                    instance = attributes_of(rm.resource.attributes)["service.instance.id"]
                    point = metric.gauge.data_points[0]
                    seen.setdefault(instance, set()).add(point.time_unix_nano)
    return seen


async def _publish_until(
    fleet: FleetTracker, forwarder: Forwarder, done: Callable[[], bool], deadline: float = 20
) -> None:
    """Run the fleet's publishing every 50 ms until `done()` or the deadline."""
    task = asyncio.create_task(publish(fleet, forwarder, 0.05, "gw:1"))
    until = time.monotonic() + deadline
    while not done() and time.monotonic() < until:
        await asyncio.sleep(0.02)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def test_a_bloated_agent_does_not_stop_another_tenants_last_seen_series(tmp_path: Path) -> None:
    """Reproduction: three requests with no points and a 25,000-attribute resource for
    tenant A; B's last-seen series keep reaching the Collector, the state file stays small."""
    keys = make_tenants(tmp_path / "tenants.json", "a", "b")
    bloated = [resource_only(connector_resource("bloat", f"bloat-{n}"), BLOAT) for n in range(3)]
    assert all(7 * 2**20 < r.ByteSize() < 8 * 2**20 for r in bloated)

    async def scenario() -> FakeCollector:
        async with (
            fake_collector() as (collector, port),
            running_gateway(tmp_path / "tenants.json", port) as gateway,
        ):
            for request in bloated:
                # Accepted or refused by the resource limits: either way, B must not care.
                with contextlib.suppress(Exception):
                    await gateway.export(request.SerializeToString(), keys["a"])
            await gateway.export(
                resource_only(connector_resource("billing", "b-1")).SerializeToString(), keys["b"]
            )
            await _publish_until(
                gateway.gateway.fleet,
                gateway.gateway.forwarder,
                lambda: len(_last_seen(collector).get("b-1", ())) >= 3,
            )
            gateway.gateway.fleet.save()
            return collector

    collector = run(scenario())
    assert isinstance(collector, FakeCollector)
    seen = _last_seen(collector)
    assert len(seen.get("b-1", ())) >= 3, seen.keys()
    # A's agents, if the gateway took them, are published too, cut to their bounds.
    assert set(seen) <= {"b-1", "bloat-0", "bloat-1", "bloat-2"}
    assert max(r.ByteSize() for r in collector.received) < MAX_REQUEST_BYTES
    state_file = tmp_path / "fleet-state.json"
    assert state_file.stat().st_size < 64 * 1024


def _bloated_fleet(tmp_path: Path) -> FleetTracker:
    fleet = FleetTracker(tmp_path / "fleet.json")
    for n in range(3):
        fleet.on_request(
            Tenant("a"), resource_only(connector_resource("bloat", f"bloat-{n}"), BLOAT)
        )
    fleet.on_request(Tenant("b"), resource_only(connector_resource("billing", "b-1")))
    return fleet


def test_each_fleet_export_holds_one_tenant_and_is_small(tmp_path: Path) -> None:
    fleet = _bloated_fleet(tmp_path)
    requests = list(fleet_requests(fleet.rows(), time.time(), "gw:1"))
    tenants = [
        {attributes_of(rm.resource.attributes)["tenant_id"] for rm in r.resource_metrics}
        for r in requests
    ]
    assert sorted(map(sorted, tenants)) == [["a"], ["b"]]
    assert max(r.ByteSize() for r in requests) < 32 * 1024


def test_exports_are_cut_by_size_whatever_one_tenant_has(tmp_path: Path) -> None:
    fleet = FleetTracker(
        tmp_path / "fleet.json", max_resource_attributes=1000, max_resource_bytes=64 * 1024
    )
    for n in range(40):
        fleet.on_request(
            Tenant("a"), resource_only(connector_resource("bloat", f"bloat-{n}"), 1000)
        )
    requests = list(fleet_requests(fleet.rows(), time.time()))
    assert len(requests) > 1
    assert sum(len(r.resource_metrics) for r in requests) == 40
    assert all(r.ByteSize() <= MAX_REQUEST_BYTES for r in requests)


def test_an_agent_keeps_a_bounded_resource_and_the_state_file_stays_small(
    tmp_path: Path,
) -> None:
    fleet = _bloated_fleet(tmp_path)
    rows = {r.instance: r for r in fleet.sightings()}
    bloated = rows["bloat-0"].resource
    # What the fleet uses is kept, whatever else the resource holds.
    assert {k: bloated[k] for k in connector_resource("bloat", "bloat-0")} == connector_resource(
        "bloat", "bloat-0"
    )
    assert bloated["tenant_id"] == "a"
    assert len(bloated) <= 32
    assert sum(len(k) + len(v) for k, v in bloated.items()) <= 4096
    assert all(len(k) <= MAX_VALUE_CHARS and len(v) <= MAX_VALUE_CHARS for k, v in bloated.items())
    assert rows["b-1"].resource == {**connector_resource("billing", "b-1"), "tenant_id": "b"}
    fleet.save()
    assert fleet.state_file.stat().st_size < 64 * 1024


def test_keys_that_would_break_prometheus_labels_are_not_republished(tmp_path: Path) -> None:
    fleet = FleetTracker(tmp_path / "fleet.json")
    odd = {
        ".": "x",
        "-": "x",
        "\uff46\uff55\uff4c\uff4c": "x",
        "_x": "x",
        "deployment.environment": "prod",
    }
    fleet.on_request(Tenant("a"), resource_only(connector_resource("svc", "s-1") | odd))
    (row,) = fleet.sightings()
    assert row.resource == {
        **connector_resource("svc", "s-1"),
        "deployment.environment": "prod",
    } | {"tenant_id": "a"}


def test_a_bloated_resource_from_an_old_state_file_is_cut_on_loading(tmp_path: Path) -> None:
    fleet = FleetTracker(tmp_path / "fleet.json")
    fleet.on_request(Tenant("a"), resource_only(connector_resource("svc", "s-1")))
    (row,) = fleet.sightings()
    fleet._tenants["a"][("svc", "s-1")].resource |= {f"junk.{n}": "v" * 500 for n in range(5000)}
    fleet.save()
    assert fleet.state_file.stat().st_size > 1024 * 1024
    (loaded,) = FleetTracker(tmp_path / "fleet.json").sightings()
    assert len(loaded.resource) <= 32
    assert {k: loaded.resource[k] for k in row.resource} == row.resource


def test_retired_and_forgotten_agents_stop_being_published(tmp_path: Path) -> None:
    now = [1_700_000_000.0]
    fleet = FleetTracker(tmp_path / "fleet.json", forget_after=3600, clock=lambda: now[0])

    def sent() -> set[str]:
        return {
            attributes_of(rm.resource.attributes)["service.instance.id"]
            for request in fleet_requests(fleet.rows(), now[0])
            for rm in request.resource_metrics
        }

    fleet.on_request(Tenant("b"), resource_only(connector_resource("billing", "retired-1")))
    fleet.on_request(Tenant("b"), resource_only(connector_resource("billing", "kept-1")))
    fleet.forget("b", ["retired-1"])
    # Retired: its series say so for LINGER_SECONDS (the rules then stop counting its
    # running series, which lingers in the Collector), then no more.
    assert sent() == {"retired-1", "kept-1"}
    now[0] += LINGER_SECONDS + 1
    fleet.on_request(Tenant("b"), resource_only(connector_resource("billing", "kept-1")))
    assert sent() == {"kept-1"}
    # Unseen for forget_after: gone from the table, and from the exports.
    now[0] += 3601
    assert sent() == set()
    assert fleet.sightings() == []
