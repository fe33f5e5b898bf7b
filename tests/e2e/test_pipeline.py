"""Agent → gateway → Collector → Prometheus, with the real components."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2_grpc import MetricsServiceStub
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricExportResult,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource

from otel_agents import connector_metrics, setup_metrics
from stack.local import LocalStack

pytestmark = pytest.mark.e2e

Keys = tuple[Path, dict[str, str]]

# Batches (rows, bytes) each test agent sends; different per tenant.
BATCHES = {
    "acme": [(100, 4096), (250, 10_240), (1, 77)],
    "globex": [(5, 640), (7, 900)],
}


def _values(result: list[dict[str, Any]]) -> dict[str, float]:
    return {series["metric"].get("tenant_id", ""): float(series["value"][1]) for series in result}


def _standard_provider(stack: LocalStack, key: str, resource: dict[str, str]) -> MeterProvider:
    """The OpenTelemetry SDK's own OTLP exporter: not this project's library."""
    exporter = OTLPMetricExporter(
        endpoint=stack.gateway_grpc_endpoint,
        headers={"authorization": f"Bearer {key}"},
    )
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    return MeterProvider(metric_readers=[reader], resource=Resource.create(resource))


def test_each_tenant_sees_exactly_what_its_agent_counted(
    stack: LocalStack, tenant_keys: Keys
) -> None:
    _, keys = tenant_keys
    job = f"e2e-connector-{uuid.uuid4().hex[:8]}"
    sent: dict[str, tuple[int, int]] = {}
    for tenant, batches in BATCHES.items():
        telemetry = setup_metrics(
            job,
            "connector",
            api_key=keys[tenant],
            endpoint=stack.gateway_grpc_endpoint,
            set_global=False,
        )
        assert telemetry.enabled
        counters = connector_metrics(telemetry)
        for rows, nbytes in batches:
            counters.record_batch(rows, nbytes)
        assert telemetry.shutdown(timeout_s=10)
        sent[tenant] = (sum(r for r, _ in batches), sum(b for _, b in batches))

    def all_tenants(result: list[dict[str, Any]]) -> bool:
        return set(_values(result)) == set(BATCHES)

    bytes_seen = _values(
        stack.wait_for(
            f'sum by (tenant_id) (connector_bytes_sent_total{{job="{job}"}})', all_tenants
        )
    )
    records_seen = _values(
        stack.wait_for(
            f'sum by (tenant_id) (connector_records_sent_total{{job="{job}"}})', all_tenants
        )
    )
    assert bytes_seen == {tenant: float(nbytes) for tenant, (_, nbytes) in sent.items()}
    assert records_seen == {tenant: float(rows) for tenant, (rows, _) in sent.items()}
    print(f"\nPrometheus saw bytes={bytes_seen} records={records_seen}")


def test_a_client_claiming_another_tenant_lands_as_its_key(
    stack: LocalStack, tenant_keys: Keys
) -> None:
    _, keys = tenant_keys
    job = f"e2e-spoof-{uuid.uuid4().hex[:8]}"
    provider = _standard_provider(stack, keys["acme"], {"service.name": job, "tenant_id": "globex"})
    counter = provider.get_meter("spoof").create_counter("spoof.probe", unit="By")
    counter.add(31, {"tenant_id": "globex", "tenant.id": "globex"})
    assert provider.force_flush(10_000)
    provider.shutdown()

    result = stack.wait_for(f'spoof_probe_bytes_total{{job="{job}"}}', lambda r: len(r) > 0)
    assert [series["metric"]["tenant_id"] for series in result] == ["acme"]
    assert float(result[0]["value"][1]) == 31.0
    # The resource's claim is replaced too: target_info says whose agent this is.
    info = stack.wait_for(f'target_info{{job="{job}"}}', lambda r: len(r) > 0)
    assert [series["metric"]["tenant_id"] for series in info] == ["acme"]


def test_a_wrong_key_is_unauthenticated_and_nothing_reaches_prometheus(
    stack: LocalStack, tenant_keys: Keys
) -> None:
    _, keys = tenant_keys
    job = f"e2e-wrongkey-{uuid.uuid4().hex[:8]}"

    exporter = OTLPMetricExporter(
        endpoint=stack.gateway_grpc_endpoint,
        headers={"authorization": "Bearer oga_00000000_wrong"},
    )
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(
        metric_readers=[reader], resource=Resource.create({"service.name": job})
    )
    provider.get_meter("wrong").create_counter("wrongkey.probe").add(1)
    provider.force_flush(10_000)  # refused; the status is checked with a raw call below
    provider.shutdown()

    # A raw call shows the status and the message the client gets.
    with grpc.insecure_channel(stack.gateway_grpc_endpoint.removeprefix("http://")) as channel:
        stub = MetricsServiceStub(channel)
        with pytest.raises(grpc.RpcError) as failure:
            stub.Export(
                ExportMetricsServiceRequest(),
                metadata=(("authorization", "Bearer oga_00000000_wrong"),),
                timeout=10,
            )
    assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "unknown or revoked API key" in failure.value.details()

    # Everything sent before this marker has been through the pipeline once
    # the marker is visible; the wrong key's metric must not be there.
    marker_provider = _standard_provider(stack, keys["globex"], {"service.name": job})
    marker_provider.get_meter("marker").create_counter("wrongkey.marker").add(1)
    assert marker_provider.force_flush(10_000)
    marker_provider.shutdown()
    stack.wait_for(f'wrongkey_marker_total{{job="{job}"}}', lambda r: len(r) == 1)
    assert stack.query(f'{{job="{job}", __name__=~"wrongkey_probe.*"}}') == []
    failures = stack.wait_for(
        'sum(gateway_auth_failures_total{reason="unknown"})',
        lambda r: len(r) == 1 and float(r[0]["value"][1]) >= 2,
    )
    assert float(failures[0]["value"][1]) >= 2


def test_the_standard_exporter_reports_a_wrong_key_as_a_failed_export(
    stack: LocalStack,
) -> None:
    """UNAUTHENTICATED is final: the exporter gives up at once instead of retrying."""
    exporter = OTLPMetricExporter(
        endpoint=stack.gateway_grpc_endpoint,
        headers={"authorization": "Bearer oga_00000000_wrong"},
        timeout=5,
    )
    reader = InMemoryMetricReader()
    source = MeterProvider(metric_readers=[reader])
    source.get_meter("wrong").create_counter("wrongkey.direct").add(1)
    data = reader.get_metrics_data()
    assert data is not None
    assert exporter.export(data) == MetricExportResult.FAILURE
    exporter.shutdown()
