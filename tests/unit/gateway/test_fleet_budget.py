"""An agent past its SDK's cardinality limit (series marked `otel.metric.overflow=true`)
shows as over budget: on /api/fleet, in `otel-gateway agents list` and as a gauge."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from gateway_fixtures import counter_request
from live_gateway import live_gateway
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.resources import Resource

from gateway import cli
from gateway.fleet import FleetTracker
from gateway.fleet.rows import MAX_OVER_BUDGET_NAMES, OVER_BUDGET_SECONDS
from gateway.tenants import Tenant

ADMIN_KEY = "fleet-budget-admin-key"
NOW = 1_700_000_000.0


def _resource(instance: str) -> dict[str, str]:
    return {
        "service.name": "orders",
        "service.instance.id": instance,
        "agent.type": "connector",
        "host.name": "db-7",
    }


def _provider(instance: str, reader: MetricReader) -> MeterProvider:
    """An SDK whose `orders.processed` keeps at most 3 series (the 4th is the overflow)."""
    return MeterProvider(
        resource=Resource(_resource(instance)),
        metric_readers=[reader],
        views=[View(instrument_name="orders.processed", aggregation_cardinality_limit=3)],
    )


def _measure(provider: MeterProvider, customers: int) -> None:
    meter = provider.get_meter("orders")
    processed = meter.create_counter("orders.processed")
    for n in range(customers):
        processed.add(1, {"customer": f"c-{n}"})
    meter.create_counter("orders.failed").add(1, {"reason": "timeout"})


def _sdk_request(instance: str, customers: int) -> ExportMetricsServiceRequest:
    """What a real SDK exports after `customers` distinct attribute values."""
    reader = InMemoryMetricReader()
    provider = _provider(instance, reader)
    _measure(provider, customers)
    data = reader.get_metrics_data()
    provider.shutdown()
    assert data is not None
    return encode_metrics(data)


def test_an_agent_over_its_cardinality_limit_is_shown_on_the_api_and_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()
    with live_gateway(tmp_path, admin_key_sha256=digest) as gateway:
        for tenant, instance, customers in (("acme", "o-1", 50), ("globex", "o-2", 2)):
            exporter = OTLPMetricExporter(
                endpoint=gateway.grpc_endpoint,
                headers={"authorization": f"Bearer {gateway.keys[tenant]}"},
                timeout=10,
            )
            reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
            provider = _provider(instance, reader)
            _measure(provider, customers)
            assert provider.force_flush(10_000)
            provider.shutdown()

        answer = httpx.get(
            f"{gateway.http_base}/api/fleet",
            headers={"authorization": f"Bearer {gateway.keys['acme']}"},
        )
        (acme,) = answer.json()["tenants"]
        assert [(a["instance"], a["over_budget"]) for a in acme["agents"]] == [
            ("o-1", ["orders.processed"])
        ]

        monkeypatch.setenv("OTEL_GATEWAY_ADMIN_KEY", ADMIN_KEY)
        assert cli.main(["agents", "list", "--url", gateway.http_base]) == 0
        header, *rows = capsys.readouterr().out.splitlines()
        assert header.split()[-2:] == ["OVER", "BUDGET"]
        assert sorted((row.split()[4], row.split()[-1]) for row in rows) == [
            ("o-1", "orders.processed"),
            ("o-2", "-"),
        ]


def test_overflow_is_found_with_and_without_the_raw_protobuf(tmp_path: Path) -> None:
    fleet = FleetTracker(tmp_path / "fleet.json", clock=lambda: NOW)
    request = _sdk_request("o-1", 10)
    fleet.on_request(Tenant("acme"), request, request.SerializeToString())
    fleet.on_request(Tenant("globex"), _sdk_request("o-2", 10))  # JSON: no raw bytes
    fleet.on_request(Tenant("initech"), _sdk_request("o-3", 3))  # at the limit, not past it
    assert {r.instance: fleet.over_budget(r, NOW) for r in fleet.sightings()} == {
        "o-1": ["orders.processed"],
        "o-2": ["orders.processed"],
        "o-3": [],
    }


def test_the_name_elsewhere_or_a_false_value_is_not_an_overflow(tmp_path: Path) -> None:
    fleet = FleetTracker(tmp_path / "fleet.json", clock=lambda: NOW)
    request = counter_request(
        name="otel.metric.overflow",
        point_attributes={"note": "otel.metric.overflow"},
        resource_attributes=_resource("o-1"),
    )
    point = request.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0]
    point.attributes.append(KeyValue(key="otel.metric.overflow", value=AnyValue(bool_value=False)))
    fleet.on_request(Tenant("acme"), request, request.SerializeToString())
    (row,) = fleet.sightings()
    assert fleet.over_budget(row, NOW) == []


def test_the_mark_goes_after_a_while_and_survives_a_restart(tmp_path: Path) -> None:
    now = [NOW]
    fleet = FleetTracker(tmp_path / "fleet.json", clock=lambda: now[0])
    fleet.on_request(Tenant("acme"), _sdk_request("o-1", 10))
    fleet.save()
    (loaded,) = FleetTracker(tmp_path / "fleet.json", clock=lambda: now[0]).sightings()
    assert fleet.over_budget(loaded, now[0]) == ["orders.processed"]
    # Within budget again (a restart with fewer values): the mark goes.
    now[0] += OVER_BUDGET_SECONDS / 2
    fleet.on_request(Tenant("acme"), _sdk_request("o-1", 2))
    (row,) = fleet.sightings()
    assert fleet.over_budget(row, now[0]) == ["orders.processed"]
    now[0] += OVER_BUDGET_SECONDS / 2 + 1
    assert fleet.over_budget(row, now[0]) == []


def test_an_agent_remembers_a_bounded_number_of_names(tmp_path: Path) -> None:
    fleet = FleetTracker(tmp_path / "fleet.json", clock=lambda: NOW)
    request = ExportMetricsServiceRequest()
    for n in range(MAX_OVER_BUDGET_NAMES + 10):
        one = counter_request(
            name=f"m{n:02d}." + "x" * 500,
            point_attributes={"otel.metric.overflow": "true"},
            resource_attributes=_resource("o-1"),
        )
        request.resource_metrics.extend(one.resource_metrics)
    fleet.on_request(Tenant("acme"), request)
    (row,) = fleet.sightings()
    names = fleet.over_budget(row, NOW)
    assert len(names) == MAX_OVER_BUDGET_NAMES
    assert names[0].startswith("m10.")
    assert max(map(len, names)) == 128


def test_the_gauge_counts_agents_over_budget_by_tenant(tmp_path: Path) -> None:
    fleet = FleetTracker(tmp_path / "fleet.json", clock=lambda: NOW)
    reader = InMemoryMetricReader()
    fleet.register_metrics(MeterProvider(metric_readers=[reader]).get_meter("gateway.fleet"))
    fleet.on_request(Tenant("acme"), _sdk_request("o-1", 10))
    fleet.on_request(Tenant("acme"), _sdk_request("o-2", 10))
    fleet.on_request(Tenant("acme"), _sdk_request("o-3", 1))
    fleet.on_request(Tenant("globex"), _sdk_request("o-4", 1))
    fleet.forget("acme", ["o-2"])  # retired: not counted

    data = reader.get_metrics_data()
    assert data is not None
    (gauge,) = [
        m
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "gateway.fleet.agents_over_budget"
    ]
    values = {dict(p.attributes)["tenant_id"]: p.value for p in gauge.data.data_points}
    assert values == {"acme": 1, "globex": 0}
