"""Fleet status: the last-seen table, its bounds, its state file and its gauges."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from gateway_fixtures import counter_request, fake_collector, make_tenants, run, running_gateway
from prometheus_client import generate_latest

from gateway.fleet import FleetTracker
from gateway.telemetry import GatewayTelemetry
from gateway.tenants import Tenant

ACME = Tenant("acme")


class Clock:
    """A settable clock."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _tracker(tmp_path: Path, clock: Clock, **options: float) -> FleetTracker:
    return FleetTracker(tmp_path / "fleet.json", clock=clock, **options)  # type: ignore[arg-type]


def _rows(fleet: FleetTracker) -> list[tuple[str, str, str, str, str]]:
    return [
        (r.tenant_id, r.agent_type, r.service, r.instance, r.version) for r in fleet.sightings()
    ]


def test_each_resource_of_an_accepted_request_is_an_agent(tmp_path: Path) -> None:
    fleet = _tracker(tmp_path, Clock())
    request = counter_request(
        resource_attributes={
            "service.name": "billing",
            "service.instance.id": "b-1",
            "agent.type": "connector",
            "service.version": "1.0",
        }
    )
    request.resource_metrics.extend(
        counter_request(resource_attributes={"service.name": "nightly-etl"}).resource_metrics
    )
    request.resource_metrics.extend(
        counter_request(resource_attributes={"service.name": "x-connector"}).resource_metrics
    )
    request.resource_metrics.extend(counter_request().resource_metrics)  # names no agent
    fleet.on_accepted(ACME, request)
    assert _rows(fleet) == [
        ("acme", "connector", "billing", "b-1", "1.0"),
        ("acme", "connector", "x-connector", "x-connector", ""),
        ("acme", "etl", "nightly-etl", "nightly-etl", ""),
    ]


def test_silent_after_the_threshold_and_forgotten_after_the_retention(tmp_path: Path) -> None:
    clock = Clock()
    fleet = _tracker(tmp_path, clock, silent_after=120, forget_after=3600)
    fleet.see("acme", "etl", "svc", "i-1", "1")
    clock.now += 120
    assert not fleet.is_silent(fleet.sightings()[0], clock.now)
    clock.now += 1
    assert fleet.is_silent(fleet.sightings()[0], clock.now)
    clock.now += 3600
    assert fleet.sightings() == []


def test_a_silent_instance_replaced_by_a_newer_one_is_forgotten(tmp_path: Path) -> None:
    clock = Clock()
    fleet = _tracker(tmp_path, clock, silent_after=120)
    fleet.see("acme", "connector", "svc", "old", "1")
    fleet.see("acme", "connector", "svc", "replica", "1")
    clock.now += 10
    fleet.see("acme", "connector", "svc", "new", "2")  # the restarted process
    for _ in range(10):  # replica and new keep reporting; old is gone
        clock.now += 30
        fleet.see("acme", "connector", "svc", "replica", "1")
        fleet.see("acme", "connector", "svc", "new", "2")
    assert [r.instance for r in fleet.sightings()] == ["new", "replica"]
    # A replica that dies with no newer instance after it stays, silent.
    clock.now += 30
    fleet.see("acme", "connector", "svc", "new", "2")
    clock.now += 200
    assert [r.instance for r in fleet.sightings()] == ["new", "replica"]


def test_at_most_max_per_tenant_rows_least_recently_seen_go_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    fleet = _tracker(tmp_path, clock, max_per_tenant=3)
    for name in ("a", "b", "c"):
        clock.now += 1
        fleet.see("acme", "etl", name, name, "")
    clock.now += 1
    fleet.see("acme", "etl", "a", "a", "")  # b is now the least recently seen
    fleet.see("globex", "etl", "g", "g", "")
    fleet.see("acme", "etl", "d", "d", "")
    assert [r.instance for r in fleet.sightings(["acme"])] == ["a", "c", "d"]
    assert [r.instance for r in fleet.sightings(["globex"])] == ["g"]
    assert "GATEWAY_FLEET_MAX_AGENTS_PER_TENANT" in caplog.text


def test_the_table_survives_a_restart_through_the_state_file(tmp_path: Path) -> None:
    clock = Clock()
    fleet = _tracker(tmp_path, clock)
    fleet.see("acme", "connector", "svc", "dead", "1.2")
    fleet.save()
    document = json.loads((tmp_path / "fleet.json").read_text())
    assert document["version"] == 1
    clock.now += 600  # the gateway was down for 10 minutes
    again = _tracker(tmp_path, clock)
    (row,) = again.sightings()
    assert (row.instance, row.version, row.last_seen) == ("dead", "1.2", clock.now - 600)
    assert again.is_silent(row, clock.now)


def test_state_is_saved_at_most_every_save_every_seconds(tmp_path: Path) -> None:
    clock = Clock()
    fleet = _tracker(tmp_path, clock, save_every=30)
    state = tmp_path / "fleet.json"
    request = counter_request(resource_attributes={"service.name": "svc"})
    fleet.on_accepted(ACME, request)
    assert not state.exists()
    clock.now += 30
    fleet.on_accepted(ACME, request)
    assert state.exists()
    saved = state.stat().st_mtime_ns
    clock.now += 29
    fleet.on_accepted(ACME, request)
    assert state.stat().st_mtime_ns == saved


def test_a_bad_or_unwritable_state_file_never_stops_the_gateway(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "fleet.json").write_text("{not json")
    fleet = _tracker(tmp_path, Clock())
    assert fleet.sightings() == []
    assert "ignored" in caplog.text
    blocked = tmp_path / "file"
    blocked.write_text("")
    fleet.state_file = blocked / "fleet.json"  # its parent is a file
    fleet.see("acme", "etl", "svc", "i", "")
    with caplog.at_level(logging.WARNING):
        fleet.save()
        fleet.save()
    assert caplog.text.count("GATEWAY_FLEET_STATE_FILE") == 1


def test_the_gauges_have_the_exact_prometheus_names_and_labels(tmp_path: Path) -> None:
    clock = Clock()
    telemetry = GatewayTelemetry.create()
    fleet = _tracker(tmp_path, clock)
    fleet.register_metrics(telemetry.provider.get_meter("gateway.fleet"))
    fleet.see("acme", "connector", "billing", "b-1", "1.0")
    fleet.see("acme", "etl", "nightly", "n-1", "0.3")
    clock.now += 42
    text = generate_latest(telemetry.registry).decode()
    samples = {
        line.partition("{")[0]: line
        for line in text.splitlines()
        if "last_seen" in line and "{" in line
    }
    assert set(samples) == {
        "connector_last_seen_seconds",
        "connector_last_seen_timestamp_seconds",
        "agent_last_seen_seconds",
        "agent_last_seen_timestamp_seconds",
    }
    connector = samples["connector_last_seen_seconds"]
    for label in ('tenant_id="acme"', 'agent_instance="b-1"', 'service="billing"', 'version="1.0"'):
        assert label in connector
    assert ' instance="' not in connector
    assert "{instance=" not in connector
    assert connector.endswith(" 42.0")
    assert float(samples["agent_last_seen_timestamp_seconds"].split()[-1]) == clock.now - 42


def test_grpc_exports_reach_the_fleet_through_the_ingestors_observers(tmp_path: Path) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "acme")

    async def scenario() -> None:
        async with (
            fake_collector() as (_, collector_port),
            running_gateway(tmp_path / "tenants.json", collector_port) as gateway,
        ):
            request = counter_request(
                resource_attributes={"service.name": "svc", "service.instance.id": "i-9"}
            )
            await gateway.export(request.SerializeToString(), keys["acme"])
            rows = gateway.gateway.fleet.sightings()
            assert [(r.tenant_id, r.instance) for r in rows] == [("acme", "i-9")]
            assert gateway.gateway.settings.fleet_state_path == tmp_path / "fleet-state.json"

    run(scenario())


def test_every_agent_has_its_own_series_past_the_sdks_default_of_2000(tmp_path: Path) -> None:
    clock = Clock()
    telemetry = GatewayTelemetry.create()
    fleet = _tracker(tmp_path, clock)
    fleet.register_metrics(telemetry.provider.get_meter("gateway.fleet"))
    for tenant in range(5):
        for agent in range(500):
            fleet.see(f"t{tenant}", "connector", "billing", f"b-{agent}", "1.0")
    text = generate_latest(telemetry.registry).decode()
    lines = [line for line in text.splitlines() if line.startswith("connector_last_seen_seconds{")]
    assert len(lines) == 2500
    assert "otel_metric_overflow" not in text
