"""otel_agents over OTLP/HTTP, configured only by the standard variables, into Prometheus.

The same agent code as over OTLP/gRPC: `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf` and
the gateway's HTTP base URL are all it takes; counts arrive exact, under the key's
tenant, on every series and on `target_info`.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from otel_agents import connector_metrics, setup_metrics
from scripts.localstack import LocalStack

pytestmark = pytest.mark.e2e

Keys = tuple[Path, dict[str, str]]


def _by_tenant(result: list[dict[str, Any]]) -> dict[str, float]:
    return {series["metric"]["tenant_id"]: float(series["value"][1]) for series in result}


@pytest.mark.parametrize(
    ("protocol_variable", "endpoint_variable", "path"),
    [
        # The base URL: /v1/metrics is appended.
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_ENDPOINT", ""),
        # The signal-specific URL, used as is.
        (
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "/v1/metrics",
        ),
    ],
)
def test_otlp_http_from_the_environment_reaches_prometheus_exactly(
    stack: LocalStack,
    tenant_keys: Keys,
    protocol_variable: str,
    endpoint_variable: str,
    path: str,
) -> None:
    _, keys = tenant_keys
    job = f"e2e-http-{uuid.uuid4().hex[:8]}"
    environ = {
        protocol_variable: "http/protobuf",
        endpoint_variable: stack.gateway_http_url + path,
        "OTEL_AGENTS_API_KEY": keys["globex"],
        "OTEL_SERVICE_NAME": job,
        "OTEL_RESOURCE_ATTRIBUTES": "service.version=3.0.1",
    }
    telemetry = setup_metrics("in-code-name", "connector", environ=environ, set_global=False)
    assert telemetry.enabled
    counters = connector_metrics(telemetry)
    for rows, nbytes in [(40, 4000), (2, 321)]:
        counters.record_batch(rows, nbytes)
    counters.record_query()
    counters.record_error("UNAVAILABLE")
    assert telemetry.force_flush(10)

    expected = {
        f'connector_bytes_sent_total{{job="{job}"}}': 4321.0,
        f'connector_records_sent_total{{job="{job}"}}': 42.0,
        f'connector_queries_processed_total{{job="{job}"}}': 1.0,
        f'connector_errors_total{{job="{job}", error_type="unavailable"}}': 1.0,
    }
    for query, value in expected.items():
        result = stack.wait_for(query, lambda r: len(r) == 1)
        assert _by_tenant(result) == {"globex": value}, query
    info = stack.wait_for(f'target_info{{job="{job}"}}', lambda r: len(r) == 1)
    assert info[0]["metric"]["tenant_id"] == "globex"
    assert info[0]["metric"]["agent_type"] == "connector"
    assert info[0]["metric"]["service_version"] == "3.0.1"
    assert telemetry.shutdown(timeout_s=10)
