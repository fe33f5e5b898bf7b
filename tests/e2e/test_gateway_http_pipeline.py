"""OTLP/HTTP and the legacy reporter through the real Collector into Prometheus.

The legacy reporter's promise is that its series have exactly the names the
otel_agents library produces; the fleet gauges' is that they reach Prometheus
under the gateway's job with their own labels intact.
"""

from __future__ import annotations

import gzip
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from stack.local import LocalStack

pytestmark = pytest.mark.e2e

Keys = tuple[Path, dict[str, str]]

CONNECTOR_SERIES: dict[str, float] = {
    "connector_bytes_sent_total": 123456,
    "connector_records_sent_total": 789,
    "connector_queries_processed_total": 55,
    "connector_errors_total": 2,
    "connector_uptime_seconds": 3600,
    "connector_connected": 1,
    "connector_certificate_expiry_days": 41.5,
}
ETL_SERIES: dict[str, float] = {
    "agent_flows_executed_total": 10,
    "agent_flows_success_total": 8,
    "agent_flows_failed_total": 2,
    "agent_tasks_executed_total": 40,
    "agent_last_flow_duration_seconds": 12.5,
    "agent_uptime_seconds": 60,
    "agent_connected": 0,
}


def _by_name(result: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {series["metric"]["__name__"]: series for series in result}


def test_legacy_reports_have_the_otel_agents_prometheus_names(
    stack: LocalStack, tenant_keys: Keys
) -> None:
    _, keys = tenant_keys
    connector_id, etl_id = f"legacy-c-{uuid.uuid4().hex[:8]}", f"legacy-e-{uuid.uuid4().hex[:8]}"
    auth = {"authorization": f"Bearer {keys['acme']}"}
    reports = [
        {
            "agent_type": "connector",
            "agent_id": connector_id,
            "version": "2.4.1",
            "uptime_seconds": 3600,
            "connected": True,
            "errors_total": 2,
            "bytes_sent_total": 123456,
            "records_sent_total": 789,
            "queries_processed": 55,
            "certificate_expiry_days": 41.5,
        },
        {
            "agent_type": "etl",
            "agent_id": etl_id,
            "uptime_seconds": 60,
            "connected": False,
            "flows_executed_total": 10,
            "flows_success_total": 8,
            "flows_failed_total": 2,
            "tasks_executed_total": 40,
            "last_flow_duration_seconds": 12.5,
            "last_flow_name": "nightly-sync",
        },
    ]
    for report in reports:
        answer = httpx.post(
            f"{stack.gateway_http_url}/api/metrics/agent/acme", json=report, headers=auth
        )
        assert answer.status_code == 200, answer.text

    for instance, expected in ((connector_id, CONNECTOR_SERIES), (etl_id, ETL_SERIES)):

        def complete(result: list[dict[str, Any]], want: dict[str, float] = expected) -> bool:
            return set(want) <= set(_by_name(result))

        found = _by_name(stack.wait_for(f'{{instance="{instance}"}}', complete))
        for name, value in expected.items():
            labels = found[name]["metric"]
            assert float(found[name]["value"][1]) == pytest.approx(value), name
            assert labels["tenant_id"] == "acme"
            assert labels["job"].startswith("legacy-")
    durations = stack.query(f'agent_last_flow_duration_seconds{{instance="{etl_id}"}}')
    assert durations[0]["metric"]["flow"] == "nightly-sync"

    # The gateway's view of the agent, sent beside the agent's own series.
    seen = stack.wait_for(
        f'connector_last_seen_seconds{{instance="{connector_id}"}}', lambda r: len(r) == 1
    )
    labels = seen[0]["metric"]
    assert labels["otel_scope_name"] == "otel_agents.gateway"
    assert (labels["tenant_id"], labels["job"], labels["version"], labels["state"]) == (
        "acme",
        "legacy-connector",
        "2.4.1",
        "running",
    )
    assert float(seen[0]["value"][1]) < 120


def test_otlp_http_json_gzip_reaches_prometheus(stack: LocalStack, tenant_keys: Keys) -> None:
    _, keys = tenant_keys
    job = f"http-json-{uuid.uuid4().hex[:8]}"
    document = {
        "resourceMetrics": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": job}}]
                },
                "scopeMetrics": [
                    {
                        "metrics": [
                            {
                                "name": "connector.bytes_sent",
                                "unit": "By",
                                "sum": {
                                    "aggregationTemporality": 2,
                                    "isMonotonic": True,
                                    "dataPoints": [{"asInt": "4096"}],
                                },
                            }
                        ]
                    }
                ],
            }
        ]
    }
    answer = httpx.post(
        f"{stack.gateway_http_url}/v1/metrics",
        content=gzip.compress(json.dumps(document).encode()),
        headers={
            "content-type": "application/json",
            "content-encoding": "gzip",
            "authorization": f"Bearer {keys['globex']}",
        },
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {}
    result = stack.wait_for(f'connector_bytes_sent_total{{job="{job}"}}', lambda r: len(r) == 1)
    assert result[0]["metric"]["tenant_id"] == "globex"
    assert float(result[0]["value"][1]) == 4096
