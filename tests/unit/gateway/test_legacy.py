"""The legacy JSON reporter: reports become the otel_agents instruments, on the same path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from gateway_fixtures import attributes_of, run
from gateway_http_fixtures import HttpGateway, http_gateway, metrics_lines
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from gateway.legacy import INSTRUMENTS, LegacyReport, to_otlp
from otel_agents.connector import ConnectorMetrics
from otel_agents.etl import EtlMetrics
from stack.pki import Authority

CONNECTOR_REPORT = {
    "agent_type": "connector",
    "agent_id": "conn-7",
    "version": "2.4.1",
    "uptime_seconds": 3600.5,
    "connected": True,
    "errors_total": 2,
    "bytes_sent_total": 123456,
    "records_sent_total": 789,
    "queries_processed": 55,
    "certificate_expiry_days": 41.5,
    "flows_executed_total": 9,  # an etl field: ignored for a connector
}
ETL_REPORT = {
    "agent_type": "etl",
    "instance_id": "etl-1",
    "version": "0.9",
    "uptime_seconds": 60,
    "connected": False,
    "flows_executed_total": 10,
    "flows_success_total": 8,
    "flows_failed_total": 2,
    "tasks_executed_total": 40,
    "last_flow_duration_seconds": 12.5,
    "last_flow_name": "nightly-sync",
}


def _metrics(request: ExportMetricsServiceRequest) -> dict[str, tuple[str, str, Any]]:
    """name → (kind, unit, value) of a one-resource request."""
    found: dict[str, tuple[str, str, Any]] = {}
    for metric in request.resource_metrics[0].scope_metrics[0].metrics:
        kind = metric.WhichOneof("data") or ""
        point = getattr(metric, kind).data_points[0]
        value = point.as_int if point.WhichOneof("value") == "as_int" else point.as_double
        found[metric.name] = (kind, metric.unit, value)
    return found


def _post(http: HttpGateway, path_tenant: str, body: Any, **headers: str) -> Any:
    return http.client.post(
        f"/api/metrics/agent/{path_tenant}", json=body, headers={**http.auth("acme"), **headers}
    )


def test_a_connector_report_becomes_the_otel_agents_instruments(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with http_gateway(tmp_path) as http:
            answer = await _post(http, "acme", CONNECTOR_REPORT)
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"status": "accepted"}
            (forwarded,) = http.collector.received
            resource = forwarded.resource_metrics[0]
            assert attributes_of(resource.resource.attributes) == {
                "service.name": "legacy-connector",
                "service.instance.id": "conn-7",
                "agent.type": "connector",
                "service.version": "2.4.1",
                "tenant_id": "acme",
            }
            assert resource.scope_metrics[0].scope.name == "otel_agents"
            assert _metrics(forwarded) == {
                "connector.bytes_sent": ("sum", "By", 123456),
                "connector.records_sent": ("sum", "{record}", 789),
                "connector.queries_processed": ("sum", "{query}", 55),
                "connector.errors": ("sum", "{error}", 2),
                "connector.uptime": ("gauge", "s", 3600.5),
                "connector.connected": ("gauge", "", 1),
                "connector.certificate_expiry": ("gauge", "d", 41.5),
            }
            for metric in resource.scope_metrics[0].metrics:
                if metric.HasField("sum"):
                    assert metric.sum.is_monotonic
                    assert metric.sum.aggregation_temporality == 2
                    point = metric.sum.data_points[0]
                    assert point.time_unix_nano - point.start_time_unix_nano == pytest.approx(
                        3600.5e9, rel=1e-6
                    )
                point = getattr(metric, metric.WhichOneof("data") or "").data_points[0]
                assert attributes_of(point.attributes) == {"tenant_id": "acme"}

    run(scenario())


def test_an_etl_report_becomes_agent_instruments_with_the_flow_name(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with http_gateway(tmp_path) as http:
            answer = await _post(http, "acme", ETL_REPORT)
            assert answer.status_code == 200, answer.text
            (forwarded,) = http.collector.received
            assert _metrics(forwarded) == {
                "agent.flows_executed": ("sum", "{flow}", 10),
                "agent.flows_success": ("sum", "{flow}", 8),
                "agent.flows_failed": ("sum", "{flow}", 2),
                "agent.tasks_executed": ("sum", "{task}", 40),
                "agent.last_flow_duration": ("gauge", "s", 12.5),
                "agent.uptime": ("gauge", "s", 60.0),
                "agent.connected": ("gauge", "", 0),
            }
            resource = forwarded.resource_metrics[0]
            assert attributes_of(resource.resource.attributes)["service.instance.id"] == "etl-1"
            (duration,) = [m for m in resource.scope_metrics[0].metrics if "duration" in m.name]
            assert attributes_of(duration.gauge.data_points[0].attributes) == {
                "flow": "nightly-sync",
                "tenant_id": "acme",
            }

    run(scenario())


def _library_instruments(tmp_path: Path) -> set[tuple[str, str, str]]:
    """(name, unit, kind) of everything the otel_agents library's own instruments export."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    certificate = Authority(tmp_path).issue("connector", "connector.example")
    connector = ConnectorMetrics(
        provider.get_meter("connector"), version="1", certificate_path=certificate.cert
    )
    connector.set_connected(True)
    connector.record_batch(10, 1000)
    connector.record_query()
    connector.record_error("UNAVAILABLE")
    etl = EtlMetrics(provider.get_meter("etl"), version="1")
    etl.status.set_connected(True)
    etl.record_task_finished("load", "completed", flow_name="nightly")
    etl.record_flow_finished("nightly", "completed", 1.5)
    etl.record_flow_finished("nightly", "failed", 2.5)
    data = reader.get_metrics_data()
    assert data is not None
    found = set()
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                monotonic = getattr(metric.data, "is_monotonic", False)
                kind = "counter" if monotonic else type(metric.data).__name__.lower()
                found.add((metric.name, metric.unit or "", kind))
    return found


def test_names_units_and_kinds_are_those_of_the_otel_agents_library(tmp_path: Path) -> None:
    library = _library_instruments(tmp_path)
    legacy = {
        (i.metric.name, i.metric.unit, "counter" if i.monotonic_sum else "gauge")
        for kind in INSTRUMENTS.values()
        for i in kind
    }
    assert legacy <= library, legacy - library
    assert ("connector.certificate_expiry", "d", "gauge") in legacy
    assert dict((name, unit) for name, unit, _ in legacy)["connector.bytes_sent"] == "By"


@pytest.mark.parametrize(
    ("body", "headers", "instance"),
    [
        ({"agent_type": "etl", "agent_id": "a-1"}, {}, "a-1"),
        ({"agent_type": "etl", "instance_id": "b.2"}, {}, "b.2"),
        ({"agent_type": "etl"}, {"x-agent-id": "host-3"}, "host-3"),
        ({"agent_type": "connector"}, {}, "acme-connector"),
    ],
)
def test_the_agent_id_comes_from_the_report_the_header_or_the_tenant(
    tmp_path: Path, body: dict[str, Any], headers: dict[str, str], instance: str
) -> None:
    async def scenario() -> None:
        async with http_gateway(tmp_path) as http:
            answer = await _post(http, "acme", {**body, "uptime_seconds": 1}, **headers)
            assert answer.status_code == 200, answer.text
            (forwarded,) = http.collector.received
            resource = attributes_of(forwarded.resource_metrics[0].resource.attributes)
            assert resource["service.instance.id"] == instance

    run(scenario())


def test_the_url_must_name_the_keys_tenant(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with http_gateway(tmp_path) as http:
            answer = await _post(http, "globex", CONNECTOR_REPORT)
            assert answer.status_code == 403
            message = answer.json()["message"]
            assert "'acme'" in message
            assert "'globex'" in message
            assert "/api/metrics/agent/acme" in message
            assert answer.json()["error"] == "tenant_mismatch"
            no_key = await http.client.post("/api/metrics/agent/acme", json=CONNECTOR_REPORT)
            assert no_key.status_code == 401
            assert http.collector.received == []
            text = (await http.client.get("/metrics")).text
            requests = metrics_lines(text, "gateway_requests_total{")
            assert any(
                'outcome="tenant_mismatch"' in r and 'transport="legacy"' in r for r in requests
            )

    run(scenario())


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"agent_type": "connector", "uptime_seconds": "abc"}, "uptime_seconds"),
        ({"agent_type": "robot"}, "agent_type"),
        ({"version": "1"}, "agent_type"),
        ({"agent_type": "connector", "bytes_sent_total": -1}, "bytes_sent_total"),
        ({"agent_type": "etl", "agent_id": "no spaces"}, "agent_id"),
        ({"agent_type": "etl", "flows_failed_total": 2**63}, "flows_failed_total"),
        ({"agent_type": "etl", "uptime_seconds": 1e12}, "uptime_seconds"),
    ],
)
def test_an_invalid_report_is_422_naming_the_field(
    tmp_path: Path, body: dict[str, Any], field: str
) -> None:
    async def scenario() -> None:
        async with http_gateway(tmp_path) as http:
            answer = await _post(http, "acme", body)
            assert answer.status_code == 422
            document = answer.json()
            assert field in document["message"]
            assert any(item["loc"][-1] == field for item in document["detail"])
            assert http.collector.received == []

    run(scenario())


def test_a_bad_agent_id_header_or_a_non_json_body_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with http_gateway(tmp_path) as http:
            header = await _post(http, "acme", {"agent_type": "etl"}, **{"x-agent-id": "a b"})
            assert header.status_code == 400
            assert "X-Agent-Id" in header.json()["message"]
            garbage = await http.client.post(
                "/api/metrics/agent/acme", content=b"{nope", headers=http.auth("acme")
            )
            assert garbage.status_code == 422

    run(scenario())


def test_fields_left_out_produce_no_points() -> None:
    request = to_otlp(LegacyReport(agent_type="etl", connected=True), "x", now=1000.0)
    assert [m.name for m in request.resource_metrics[0].scope_metrics[0].metrics] == [
        "agent.connected"
    ]
