"""Per-tenant limits and hostile input end to end: gateway → real Collector → Prometheus.

Each test starts its own gateway process with a limits file that is tight for
`acme` only, forwarding to the session stack's Collector. `globex` sends the
same data through the same gateway: its counts in Prometheus must be exact.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc.error_details_pb2 import RetryInfo
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2_grpc import MetricsServiceStub
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2 as m
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from stack.local import LocalStack, Ports, http_get

pytestmark = pytest.mark.e2e

Keys = tuple[Path, dict[str, str]]
Point = tuple[str, dict[str, str], float]  # metric name, attributes, value
LONG = "much-much-too-long-a-value"  # 26 characters, over acme's 24 (job names fit)


class Client:
    """Raw OTLP/gRPC calls to one gateway, with cumulative counters of one job."""

    def __init__(self, endpoint: str, keys: dict[str, str], job: str) -> None:
        self._channel = grpc.insecure_channel(endpoint)
        self._stub = MetricsServiceStub(self._channel)
        self.keys, self.job = keys, job

    def request(self, points: list[Point]) -> ExportMetricsServiceRequest:
        """One request: each point a cumulative monotonic sum of the job's resource."""
        now = time.time_ns()
        metrics = [
            m.Metric(
                name=name,
                sum=m.Sum(
                    data_points=[
                        m.NumberDataPoint(
                            as_double=value,
                            time_unix_nano=now,
                            attributes=[
                                KeyValue(key=k, value=AnyValue(string_value=v))
                                for k, v in attributes.items()
                            ],
                        )
                    ],
                    is_monotonic=True,
                    aggregation_temporality=2,
                ),
            )
            for name, attributes, value in points
        ]
        resource = [KeyValue(key="service.name", value=AnyValue(string_value=self.job))]
        return ExportMetricsServiceRequest(
            resource_metrics=[
                m.ResourceMetrics(
                    resource=Resource(attributes=resource),
                    scope_metrics=[m.ScopeMetrics(metrics=metrics)],
                )
            ]
        )

    def send(self, tenant: str, points: list[Point]) -> ExportMetricsServiceResponse:
        """Export; raises grpc.RpcError on a refusal."""
        response: ExportMetricsServiceResponse = self._stub.Export(
            self.request(points),
            metadata=(("authorization", f"Bearer {self.keys[tenant]}"),),
            timeout=10,
        )
        return response

    def refusal(self, tenant: str, points: list[Point]) -> grpc.RpcError:
        """The error of an export that must be refused."""
        with pytest.raises(grpc.RpcError) as failure:
            self.send(tenant, points)
        return failure.value

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()


@pytest.fixture
def limited(
    stack: LocalStack, tenant_keys: Keys, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Client]:
    """A gateway of this test's own; `request.param` holds acme's limits."""
    limits_file = tmp_path / "limits.yaml"
    overrides: dict[str, object] = request.param
    limits_file.write_text(
        "tenants:\n  acme:\n" + "".join(f"    {k}: {v}\n" for k, v in overrides.items())
    )
    own = LocalStack(tmp_path / "run", tenants_file=tenant_keys[0], ports=Ports())
    process = own.start_gateway(
        extra_env={
            "GATEWAY_COLLECTOR_ENDPOINT": f"127.0.0.1:{stack.ports.collector_otlp}",
            "GATEWAY_LIMITS_FILE": str(limits_file),
        }
    )
    client = Client(
        f"127.0.0.1:{own.ports.gateway_grpc}", tenant_keys[1], f"e2e-limits-{uuid.uuid4().hex[:8]}"
    )
    try:
        own.wait_ready(process, timeout=30)
        yield client
    finally:
        client.close()
        own.stop_all()
        assert process.popen.poll() is not None


def acme_limits(**limits: object) -> pytest.MarkDecorator:
    """Run a test against a gateway whose limits file sets `limits` for acme."""
    return pytest.mark.parametrize("limited", [limits], indirect=True, ids=["acme-limits"])


def _by_tenant(result: list[dict[str, Any]], label: str = "tenant_id") -> dict[str, float]:
    return {s["metric"].get(label, ""): float(s["value"][1]) for s in result}


def _after_marker(stack: LocalStack, client: Client, promql: str) -> list[dict[str, Any]]:
    """`promql` once a marker sent after everything else has reached Prometheus."""
    client.send("globex", [("limits.marker", {}, 1.0)])
    stack.wait_for(f'limits_marker_total{{job="{client.job}"}}', lambda r: len(r) == 1)
    return stack.query(promql)


@acme_limits(rate_limit_requests_per_second=0.2, rate_limit_burst=2)
def test_over_the_rate_acme_waits_and_globex_is_untouched(
    stack: LocalStack, limited: Client
) -> None:
    for value in (10.0, 20.0):
        limited.send("acme", [("limits.rate", {}, value)])
    error = limited.refusal("acme", [("limits.rate", {}, 30.0)])
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details().startswith("rate_limited: tenant 'acme' is over its rate")
    retry = RetryInfo.FromString(dict(error.trailing_metadata())["google.rpc.retryinfo-bin"])
    assert 1 <= retry.retry_delay.seconds <= 5
    for value in range(1, 8):
        limited.send("globex", [("limits.rate", {}, float(value))])

    query = f'limits_rate_total{{job="{limited.job}"}}'
    result = stack.wait_for(query, lambda r: _by_tenant(r) == {"acme": 20.0, "globex": 7.0})
    assert len(result) == 2


@acme_limits(max_data_points_per_request=3, max_request_bytes=2000)
def test_too_many_points_or_bytes_refuse_acme_whole_requests_only(
    stack: LocalStack, limited: Client
) -> None:
    four = [("limits.batch", {"part": str(n)}, float(n + 1)) for n in range(4)]
    error = limited.refusal("acme", four)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details().startswith("too_many_data_points: 4 data points in one request")
    assert "max_data_points_per_request" in error.details()
    big = [("limits.batch", {"part": f"{n}" + "x" * 800}, 1.0) for n in range(3)]
    error = limited.refusal("acme", big)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details().startswith("request_too_large: ")
    assert "max_request_bytes" in error.details()
    limited.send("globex", four)

    result = _after_marker(
        stack, limited, f'sum by (tenant_id) (limits_batch_total{{job="{limited.job}"}})'
    )
    assert _by_tenant(result) == {"globex": 10.0}  # 1+2+3+4, and nothing of acme's


@acme_limits(max_active_series=2, max_attributes_per_point=2, max_attribute_value_length=24)
def test_bad_points_are_dropped_with_partial_success_and_good_ones_land(
    stack: LocalStack, limited: Client
) -> None:
    points: list[Point] = [
        ("limits.points", {"flow": "a"}, 5.0),  # good
        ("limits.points", {"flow": "b"}, 6.0),  # good: the second series
        ("limits.points", {"flow": "c"}, 7.0),  # series_limit for acme
        ("limits.points", {"flow": "d", "kind": "x", "step": "y"}, 1.0),  # attribute_limit
        ("limits.points", {"flow": LONG}, 1.0),  # attribute_value_too_long
        ("limits.points", {"Customer-Name": "e"}, 1.0),  # attribute_key_not_allowed
        ("limits-points", {"flow": "f"}, 1.0),  # metric_name_not_allowed
        ("limits.points", {"flow": "g"}, math.nan),  # invalid_value
        ("limits.points", {"flow": "h"}, -4.0),  # invalid_value: a counter below 0
    ]
    acme = limited.send("acme", points).partial_success
    assert acme.rejected_data_points == 7
    message = acme.error_message
    assert message.startswith("7 of 9 data points rejected; ")
    for reason, setting in [
        ("series_limit: 1", "max_active_series"),
        ("attribute_limit: 1", "max_attributes_per_point"),
        ("attribute_value_too_long: 1", "max_attribute_value_length"),
        ("attribute_key_not_allowed: 1", "attribute_key_patterns"),
        ("metric_name_not_allowed: 1", "metric_name_patterns"),
        ("invalid_value: 2", ""),
    ]:
        assert reason in message
        assert setting in message
    globex = limited.send("globex", points).partial_success
    assert globex.rejected_data_points == 4  # default limits: only the invalid ones

    query = f'limits_points_total{{job="{limited.job}"}}'
    result = stack.wait_for(query, lambda r: len(r) == 7)
    seen = {(s["metric"]["tenant_id"], s["metric"]["flow"]): float(s["value"][1]) for s in result}
    assert seen == {
        ("acme", "a"): 5.0,
        ("acme", "b"): 6.0,
        ("globex", "a"): 5.0,
        ("globex", "b"): 6.0,
        ("globex", "c"): 7.0,
        ("globex", "d"): 1.0,
        ("globex", LONG): 1.0,
    }
    assert len(_after_marker(stack, limited, query)) == 7  # and nothing more came later


HOSTILE = ['q"uote', "back\\slash", "new\nline", "br}ace{s", 'x",tenant_id="globex', "é ✓"]


@acme_limits(max_active_series=100)
def test_values_that_need_escaping_neither_break_the_scrape_nor_touch_globex(
    stack: LocalStack, limited: Client
) -> None:
    limited.send("acme", [("limits.escape", {"flow": v}, 1.0) for v in HOSTILE])
    limited.send("globex", [("limits.escape", {"flow": "plain"}, 3.0)])

    query = f'limits_escape_total{{job="{limited.job}"}}'
    result = stack.wait_for(query, lambda r: len(r) == len(HOSTILE) + 1)
    acme = {s["metric"]["flow"]: s["metric"]["tenant_id"] for s in result if s["value"][1] == "1"}
    assert acme == dict.fromkeys(HOSTILE, "acme")
    globex = [s for s in result if s["metric"]["tenant_id"] == "globex"]
    assert [(s["metric"]["flow"], s["value"][1]) for s in globex] == [("plain", "3")]
    # The Collector's exposition still parses: its scrape is up and error-free.
    status, body = http_get(f"{stack.prometheus_url}/api/v1/targets?state=active", timeout=5)
    assert status == 200
    targets = json.loads(body)["data"]["activeTargets"]
    collector = [t for t in targets if t["labels"].get("job") == "collector"]
    assert collector
    assert all(t["health"] == "up" and not t["lastError"] for t in collector)
