"""One tenant cannot take another's names or labels away, end to end:
gateway → real Collector → Prometheus.

acme goes first with what used to make globex's series vanish in the Collector's
exporter (the first type seen for a name wins, and one bad resource key fails
`target_info` for everyone): a gauge `connector.errors_total`, a histogram of the
gateway's own `agent.last_seen`, and a resource key `.`. Each is refused in
`partial_success`; globex's counter, its last-seen series and its `target_info`
reach Prometheus.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2_grpc import MetricsServiceStub
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2 as m
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from stack.local import LocalStack

pytestmark = pytest.mark.e2e


def _resource(attributes: dict[str, str], metrics: list[m.Metric]) -> m.ResourceMetrics:
    return m.ResourceMetrics(
        resource=Resource(
            attributes=[
                KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in attributes.items()
            ]
        ),
        scope_metrics=[m.ScopeMetrics(metrics=metrics)],
    )


def _counter(name: str, unit: str, value: float) -> m.Metric:
    point = m.NumberDataPoint(as_double=value, time_unix_nano=time.time_ns())
    return m.Metric(
        name=name,
        unit=unit,
        sum=m.Sum(data_points=[point], is_monotonic=True, aggregation_temporality=2),
    )


def _gauge(name: str, value: float) -> m.Metric:
    point = m.NumberDataPoint(as_double=value, time_unix_nano=time.time_ns())
    return m.Metric(name=name, gauge=m.Gauge(data_points=[point]))


def _histogram(name: str, unit: str) -> m.Metric:
    point = m.HistogramDataPoint(
        time_unix_nano=time.time_ns(), count=1, sum=1.0, explicit_bounds=[1.0], bucket_counts=[1, 0]
    )
    return m.Metric(
        name=name, unit=unit, histogram=m.Histogram(data_points=[point], aggregation_temporality=2)
    )


def _send(
    stub: MetricsServiceStub, key: str, *resources: m.ResourceMetrics
) -> ExportMetricsServiceResponse:
    response: ExportMetricsServiceResponse = stub.Export(
        ExportMetricsServiceRequest(resource_metrics=resources),
        metadata=(("authorization", f"Bearer {key}"),),
        timeout=10,
    )
    return response


def _by_tenant(result: list[dict[str, Any]]) -> dict[str, float]:
    return {s["metric"].get("tenant_id", ""): float(s["value"][1]) for s in result}


def test_acme_cannot_hide_globex_counter_last_seen_or_target_info(
    stack: LocalStack, tenant_keys: tuple[Path, dict[str, str]]
) -> None:
    keys = tenant_keys[1]
    job = f"e2e-namespace-{uuid.uuid4().hex[:8]}"
    acme = {"service.name": job, "service.instance.id": f"{job}-acme"}
    globex = {"service.name": job, "service.instance.id": f"{job}-globex", "agent.type": "etl"}
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports.gateway_grpc}") as channel:
        stub = MetricsServiceStub(channel)
        forged = [_gauge("connector.errors_total", 99.0), _histogram("agent.last_seen", "s")]
        marker = _resource(acme, [_counter("namespace.marker", "", 1.0)])
        # Its own instance: the exporter builds one target_info per job and instance.
        odd = {**acme, "service.instance.id": f"{job}-acme-odd", ".": "x"}
        bad_key = _resource(odd, [_counter("namespace.other", "", 1.0)])
        response = _send(stub, keys["acme"], _resource(acme, forged), marker, bad_key)
        message = response.partial_success.error_message
        assert response.partial_success.rejected_data_points == 3, message
        assert "metric_type_conflict: 1 (metric 'connector.errors_total'" in message
        assert "metric_name_reserved: 1 (metric 'agent.last_seen'" in message
        assert "attribute_key_not_allowed: 1 (resource attribute key '.'" in message

        # Once the exporter has been scraped with acme's data, its types are set.
        stack.wait_for(f'namespace_marker_total{{job="{job}"}}', lambda r: len(r) == 1)
        _send(stub, keys["globex"], _resource(globex, [_counter("connector.errors", "{error}", 5)]))
        try:
            errors = stack.wait_for(
                f'connector_errors_total{{job="{job}"}}', lambda r: _by_tenant(r) == {"globex": 5.0}
            )
            assert len(errors) == 1
            # The gateway's own last-seen gauge for globex's agent, every 10 s.
            stack.wait_for(
                f'agent_last_seen_seconds{{job="{job}", tenant_id="globex"}}',
                lambda r: len(r) == 1,
            )
            # target_info of globex's agent (and of acme's good resource).
            stack.wait_for(f'target_info{{job="{job}"}}', lambda r: len(r) == 2)
            assert stack.query(f'namespace_other_total{{job="{job}"}}') == []
        finally:
            # A clean stop: the agent must not page later tests of the session.
            stopped = {**globex, "otel_agents.state": "stopped"}
            _send(
                stub,
                keys["globex"],
                _resource(stopped, [_counter("connector.errors", "{error}", 5)]),
            )
