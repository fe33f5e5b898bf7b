"""Two live processes under one identity are a clash; restarts, stops and moves are not.
Rolling deploys stay quiet and stopped agents leave the table after `retire_after`."""

from __future__ import annotations

from pathlib import Path

from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.sdk.metrics import Counter, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client import generate_latest

from gateway.fleet import FleetTracker
from gateway.fleet.api import agent_document
from gateway.fleet.rows import Agent
from gateway.telemetry import GatewayTelemetry
from gateway.tenants import Tenant

ACME = Tenant("acme")
EXPORT_S = 5.0


class Clock:
    """A settable clock."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Process:
    """One agent process: a real OpenTelemetry SDK whose collections become OTLP requests."""

    def __init__(
        self, host: str, instance: str = "c4a17407", *, delta: bool = False, stopped: bool = False
    ) -> None:
        temporality = AggregationTemporality.DELTA if delta else AggregationTemporality.CUMULATIVE
        self.reader = InMemoryMetricReader(preferred_temporality={Counter: temporality})
        attributes = {
            "service.name": "orders-connector",
            "service.instance.id": instance,
            "agent.type": "connector",
            "host.name": host,
        }
        self.provider = MeterProvider(
            metric_readers=[self.reader], resource=Resource.create(attributes)
        )
        self.host = host
        meter = self.provider.get_meter("orders")
        self.rows = meter.create_counter("connector.rows_read")
        self.bytes = meter.create_counter("connector.bytes_sent", unit="By")
        self.tables = 0

    def export(self, *, stopped: bool = False) -> ExportMetricsServiceRequest:
        """One export; each adds a series (a new table), as a busy connector does."""
        self.tables += 1
        self.rows.add(3, {"table": f"t{self.tables}"})
        self.bytes.add(100)
        data = self.reader.get_metrics_data()
        assert data is not None
        request = encode_metrics(data)
        if stopped:
            for resource_metrics in request.resource_metrics:
                kv = resource_metrics.resource.attributes.add()
                kv.key, kv.value.string_value = "otel_agents.state", "stopped"
        return request


def _tracker(tmp_path: Path, clock: Clock, name: str = "fleet.json") -> FleetTracker:
    return FleetTracker(tmp_path / name, silent_after=4 * EXPORT_S, clock=clock)


def _send(fleet: FleetTracker, clock: Clock, process: Process, **options: bool) -> None:
    clock.now += EXPORT_S / 2  # two processes: each exports once per interval
    fleet.on_request(ACME, process.export(**options))


def _clashes(fleet: FleetTracker, clock: Clock) -> list[tuple[str, list[str]]]:
    rows = fleet.sightings()
    return [(r.instance, r.clash_hosts) for r in rows if fleet.clashing(r, clock.now)]


def test_two_live_processes_on_one_host_clash_by_their_start_times(tmp_path: Path) -> None:
    clock = Clock()
    fleet = _tracker(tmp_path, clock)
    first = Process("node-1")
    clock.now += 1.0
    second = Process("node-1")  # the same OTEL_RESOURCE_ATTRIBUTES, started later
    _send(fleet, clock, first)
    _send(fleet, clock, second)
    assert _clashes(fleet, clock) == []
    _send(fleet, clock, first)  # one export interval after the first: back to its start
    assert _clashes(fleet, clock) == [("c4a17407", ["node-1"])]
    row = fleet.sightings()[0]
    assert fleet.status(row, clock.now) == "up"  # the states keep their meaning
    document = agent_document(fleet, row, clock.now)
    assert (document["status"], document["clash"], document["clash_hosts"]) == (
        "up",
        True,
        ["node-1"],
    )


def test_three_processes_on_one_host_clash_too(tmp_path: Path) -> None:
    clock = Clock()
    fleet = _tracker(tmp_path, clock)
    trio = []
    for _ in range(3):
        clock.now += 1.0
        trio.append(Process("node-1"))
    for process in trio:  # each in turn: never A, B, A
        _send(fleet, clock, process)
    _send(fleet, clock, trio[0])
    assert _clashes(fleet, clock) == [("c4a17407", ["node-1"])]


def test_containers_sharing_a_machine_id_clash_by_their_hosts(tmp_path: Path) -> None:
    clock = Clock()
    fleet = _tracker(tmp_path, clock)
    pods = [Process("orders-7d9f-abcde"), Process("orders-7d9f-fghij")]
    for process in (*pods, pods[0]):
        _send(fleet, clock, process)
    assert _clashes(fleet, clock) == [("c4a17407", ["orders-7d9f-abcde", "orders-7d9f-fghij"])]


def test_hosts_renamed_at_every_export_keep_the_clash_named_as_it_started(
    tmp_path: Path,
) -> None:
    """One host name per export made one gateway_fleet_agents_clashing series each."""
    clock = Clock()
    fleet = _tracker(tmp_path, clock)
    named = set()
    steady = Process("pod-a")
    for i in range(60):
        _send(fleet, clock, steady)
        _send(fleet, clock, Process(f"pod-{i}"))
        named.update(",".join(hosts) for _, hosts in _clashes(fleet, clock))
    assert len(named) == 1, named


def test_the_clash_is_on_the_gauge_and_ends_when_one_process_is_gone(tmp_path: Path) -> None:
    clock = Clock()
    telemetry = GatewayTelemetry.create()
    fleet = _tracker(tmp_path, clock)
    fleet.register_metrics(telemetry.provider.get_meter("gateway.fleet"))
    pods = [Process("pod-a"), Process("pod-b")]
    for _ in range(3):
        for process in pods:
            _send(fleet, clock, process)
    text = generate_latest(telemetry.registry).decode()
    assert (
        'gateway_fleet_agents_clashing{hosts="pod-a,pod-b",otel_scope_name="gateway.fleet",'
        'otel_scope_schema_url="",otel_scope_version="",service="orders-connector",'
        'service_instance_id="c4a17407",tenant_id="acme",type="connector"} 1.0'
    ) in text
    assert f'gateway_fleet_agents{{fleet="{fleet.scope}",otel_scope_name="gateway.fleet"' in text
    assert 'state="up",tenant_id="acme",type="connector"} 1.0' in text
    for _ in range(5):  # pod-b is gone; pod-a goes on alone for over silent_after
        _send(fleet, clock, pods[0])
        clock.now += EXPORT_S / 2
    assert _clashes(fleet, clock) == []
    assert "gateway_fleet_agents_clashing{" not in generate_latest(telemetry.registry).decode()


def test_a_restart_is_never_a_clash(tmp_path: Path) -> None:
    clock = Clock()
    fleet = _tracker(tmp_path, clock)
    for _ in range(3):  # killed, then started again on the same host: a new start time
        process = Process("node-1")
        for _ in range(4):
            _send(fleet, clock, process)
            assert _clashes(fleet, clock) == []


def test_a_clean_stop_then_a_start_is_never_a_clash(tmp_path: Path) -> None:
    clock = Clock()
    fleet = _tracker(tmp_path, clock)
    old = Process("node-1")
    for _ in range(3):
        _send(fleet, clock, old)
    new = Process("node-2")  # rescheduled elsewhere
    _send(fleet, clock, new)
    _send(fleet, clock, old, stopped=True)  # the old one's final export came in late
    for process in (new, new):
        _send(fleet, clock, process)
        assert _clashes(fleet, clock) == []
    _send(fleet, clock, new, stopped=True)
    back = Process("node-1")  # and back on its first node at once
    for _ in range(3):
        _send(fleet, clock, back)
        assert _clashes(fleet, clock) == []
    assert fleet.status(fleet.sightings()[0], clock.now) == "up"


def test_an_agent_moving_between_gateway_replicas_is_never_a_clash(tmp_path: Path) -> None:
    clock = Clock()
    replicas = [_tracker(tmp_path, clock, "a.json"), _tracker(tmp_path, clock, "b.json")]
    process = Process("node-1")
    for fleet in (replicas[0], replicas[0], replicas[1], replicas[1], replicas[0]):
        _send(fleet, clock, process)  # it reconnects to another replica, and back
    restarted = Process("node-1")
    for fleet in (replicas[1], replicas[0], replicas[1]):
        _send(fleet, clock, restarted)
    assert [_clashes(fleet, clock) for fleet in replicas] == [[], []]


def test_a_process_whose_series_appear_one_by_one_is_no_clash(tmp_path: Path) -> None:
    clock = Clock()
    fleet = _tracker(tmp_path, clock)
    start = 1_700_000_000_123_456_789
    for count in (1, 1, 2, 2, 1, 2):  # a second cumulative metric from its second minute
        starts = tuple((f"{i:08x}", start + i) for i in range(count))
        clock.now += EXPORT_S
        fleet.see(
            ACME.id, Agent("connector", "orders", "c4a17407", "1", "node-1", False, starts=starts)
        )
    assert _clashes(fleet, clock) == []


def test_a_delta_client_whose_start_times_move_at_each_export_is_no_clash(
    tmp_path: Path,
) -> None:
    clock = Clock()
    fleet = _tracker(tmp_path, clock)
    process = Process("node-1", delta=True)
    for _ in range(6):
        _send(fleet, clock, process)
    assert _clashes(fleet, clock) == []


def test_a_rolling_deploy_pages_nobody_and_replaced_pods_leave_the_table(tmp_path: Path) -> None:
    clock = Clock()
    fleet = FleetTracker(
        tmp_path / "fleet.json", silent_after=4 * EXPORT_S, retire_after=86400.0, clock=clock
    )
    pods = [Process(f"orders-v1-{i}", instance=f"v1-{i}") for i in range(3)]
    for _ in range(2):
        for pod in pods:
            _send(fleet, clock, pod)
    for day in range(1, 4):  # a daily deploy: each pod gets SIGTERM, a new one (new name) starts
        for i in range(3):
            _send(fleet, clock, pods[i], stopped=True)
            pods[i] = Process(f"orders-v{day + 1}-{i}", instance=f"v{day + 1}-{i}")
            _send(fleet, clock, pods[i])
        for _ in range(3):
            for pod in pods:
                _send(fleet, clock, pod)
            statuses = [fleet.status(r, clock.now) for r in fleet.sightings()]
            assert "silent" not in statuses
        for _ in range(23):  # the pods run until the next day's deploy
            clock.now += 3600
            for pod in pods:
                _send(fleet, clock, pod)
    rows = fleet.sightings()
    live = sorted(r.instance for r in rows if fleet.status(r, clock.now) == "up")
    assert live == ["v4-0", "v4-1", "v4-2"]
    # The last deploy's pods are still listed as stopped; older ones are gone.
    assert sorted(r.instance for r in rows if r.state == "stopped") == ["v3-0", "v3-1", "v3-2"]
    assert len(rows) == 6
    clock.now += 2 * 3600
    assert sorted(r.instance for r in fleet.sightings()) == ["v4-0", "v4-1", "v4-2"]
    assert _clashes(fleet, clock) == []
