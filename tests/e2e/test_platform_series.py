"""The platform's own signals against the real stack: the gateway's /metrics is on
its own port (as stack/local.py and compose.yaml deploy it), and a tenant's
series named after the platform (`up` = 0 with service.name=gateway) neither reach
the platform's series nor page."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    Gauge,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from stack.local import LocalStack, http_get

pytestmark = pytest.mark.e2e

EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"


def _kvs(attributes: dict[str, str]) -> list[KeyValue]:
    return [KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in attributes.items()]


def _gauge(name: str, value: float, attributes: dict[str, str]) -> Metric:
    return Metric(
        name=name,
        gauge=Gauge(data_points=[NumberDataPoint(as_double=value, attributes=_kvs(attributes))]),
    )


def test_the_gateway_metrics_are_on_their_own_port(stack: LocalStack) -> None:
    status, _ = http_get(f"{stack.gateway_http_url}/metrics", timeout=5.0)
    assert status == 404
    status, body = http_get(f"{stack.gateway_metrics_url}/metrics", timeout=5.0)
    assert status == 200
    assert b"gateway_requests_in_flight" in body
    # Prometheus scrapes that port: the gateway's `up` is 1.
    up = stack.wait_for(
        'up{job="gateway", tenant_id=""}', lambda r: bool(r) and r[0]["value"][1] == "1"
    )
    assert up[0]["metric"]["instance"] == f"127.0.0.1:{stack.ports.gateway_metrics}"


def test_a_tenants_platform_named_series_do_not_pose_as_the_platform(
    stack: LocalStack, tenant_keys: tuple[Path, dict[str, str]]
) -> None:
    _, keys = tenant_keys
    instance = f"forged-{uuid.uuid4().hex[:8]}"
    marker = f"e2e_platform_marker_{uuid.uuid4().hex[:8]}"
    # One request: the forged platform series and a marker of the same resource, so
    # that the marker in Prometheus says the forged series had their chance too.
    request = ExportMetricsServiceRequest(
        resource_metrics=[
            ResourceMetrics(
                resource=Resource(
                    attributes=_kvs({"service.name": "gateway", "service.instance.id": instance})
                ),
                scope_metrics=[
                    ScopeMetrics(
                        metrics=[
                            _gauge("up", 0, {}),
                            _gauge(
                                "gateway_fleet_agents", 50, {"type": "connector", "state": "up"}
                            ),
                            _gauge(marker, 1, {}),
                        ]
                    )
                ],
            )
        ]
    )
    with grpc.insecure_channel(stack.gateway_grpc_endpoint.removeprefix("http://")) as channel:
        export = channel.unary_unary(EXPORT, ExportMetricsServiceRequest.SerializeToString, None)
        export(request, metadata=(("authorization", f"Bearer {keys['acme']}"),), timeout=10)
    seen = stack.wait_for(marker, lambda result: len(result) == 1)
    assert seen[0]["metric"]["job"] == "gateway"
    assert seen[0]["metric"]["tenant_id"] == "acme"
    others = f'{{instance="{instance}", __name__!~"{marker}|target_info"}}'
    assert stack.query(others) == []
    up = stack.query('up{job="gateway"}')
    assert [(s["metric"].get("tenant_id"), s["value"][1]) for s in up] == [(None, "1")]
    assert stack.query('ALERTS{alertname="GatewayDown"}') == []
    assert stack.query("pipeline:agents_known:count")[0]["value"][1] != "50"
