"""Tenant stamping on every kind of data point."""

from __future__ import annotations

import pytest
from gateway_fixtures import attributes_of
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2 as m
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from gateway.enrich import claims_tenant, stamp_tenant
from gateway.tenants import Tenant


def _kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


@pytest.mark.parametrize(
    "key", ["tenant_id", "tenant.id", "Tenant-ID", "TENANT_ID", "tenant/id", "tenant id"]
)
def test_keys_that_would_become_the_tenant_label_are_claims(key: str) -> None:
    assert claims_tenant(key)


@pytest.mark.parametrize("key", ["tenant", "tenantid", "tenant_ids", "my_tenant_id", "service"])
def test_other_keys_are_not_claims(key: str) -> None:
    assert not claims_tenant(key)


def test_every_point_type_gets_the_tenant_and_loses_client_claims() -> None:
    spoof = [_kv("tenant.id", "other"), _kv("flow", "etl")]
    exemplar = m.Exemplar(filtered_attributes=[_kv("tenant_id", "other")], as_double=1.0)
    metrics = [
        m.Metric(name="g", gauge=m.Gauge(data_points=[m.NumberDataPoint(attributes=spoof)])),
        m.Metric(
            name="s",
            sum=m.Sum(
                data_points=[
                    m.NumberDataPoint(attributes=spoof, exemplars=[exemplar]),
                    m.NumberDataPoint(attributes=spoof),
                ]
            ),
        ),
        m.Metric(
            name="h", histogram=m.Histogram(data_points=[m.HistogramDataPoint(attributes=spoof)])
        ),
        m.Metric(
            name="e",
            exponential_histogram=m.ExponentialHistogram(
                data_points=[m.ExponentialHistogramDataPoint(attributes=spoof)]
            ),
        ),
        m.Metric(name="q", summary=m.Summary(data_points=[m.SummaryDataPoint(attributes=spoof)])),
        m.Metric(name="empty"),
    ]
    request = ExportMetricsServiceRequest(
        resource_metrics=[m.ResourceMetrics(scope_metrics=[m.ScopeMetrics(metrics=metrics)])]
    )

    assert stamp_tenant(request, Tenant("acme")) == 6

    stamped = request.resource_metrics[0].scope_metrics[0].metrics
    for metric in stamped[:-1]:
        for point in getattr(metric, metric.WhichOneof("data")).data_points:
            assert attributes_of(point.attributes) == {"flow": "etl", "tenant_id": "acme"}
    assert attributes_of(stamped[1].sum.data_points[0].exemplars[0].filtered_attributes) == {}


@pytest.mark.parametrize("strip", [True, False])
def test_every_resource_gets_the_tenant_too_for_target_info(strip: bool) -> None:
    claim = [_kv("tenant_id", "other")] if strip else []
    request = ExportMetricsServiceRequest(
        resource_metrics=[
            m.ResourceMetrics(
                resource=Resource(attributes=[_kv("service.name", name), *claim]),
                scope_metrics=[
                    m.ScopeMetrics(
                        metrics=[
                            m.Metric(name="g", gauge=m.Gauge(data_points=[m.NumberDataPoint()]))
                        ]
                    )
                ],
            )
            for name in ("one", "two")
        ]
    )

    assert stamp_tenant(request, Tenant("acme"), strip=strip) == 2

    assert [attributes_of(r.resource.attributes) for r in request.resource_metrics] == [
        {"service.name": "one", "tenant_id": "acme"},
        {"service.name": "two", "tenant_id": "acme"},
    ]
