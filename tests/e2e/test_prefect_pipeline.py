"""Prefect runs → otel_agents → gateway → Collector → Prometheus: the contracted names.

Real flows run in this process against a real Prefect server; their counts must reach
Prometheus under exactly the names dashboards use, with the tenant of the API key.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from otel_agents import setup_metrics
from otel_agents.prefect import instrument
from stack.local import LocalStack, http_get

pytestmark = pytest.mark.e2e
prefect = pytest.importorskip("prefect")

Keys = tuple[Path, dict[str, str]]


def test_flow_and_task_runs_reach_prometheus_under_the_contracted_names(
    stack: LocalStack, tenant_keys: Keys, prefect_api: str
) -> None:
    from prefect import flow, task

    _, keys = tenant_keys
    job = f"e2e-etl-{uuid.uuid4().hex[:8]}"
    attempts = {"n": 0}

    @task(retries=1, retry_delay_seconds=0)
    def extract() -> int:
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise ConnectionError("transient")
        return 3

    @flow
    def nightly(fail: bool = False) -> int:
        rows = extract()
        if fail:
            raise ValueError("bad input")
        return rows

    telemetry = setup_metrics(
        job,
        "etl",
        api_key=keys["acme"],
        endpoint=stack.gateway_grpc_endpoint,
        service_version="7.1.0",
        environ={},
        set_global=False,
    )
    handle = instrument(telemetry, version="7.1.0", children=False, probe_interval_s=60)
    try:
        assert handle.mode == "counting"
        assert nightly() == 3
        failed: Any = nightly(fail=True, return_state=True)
        assert failed.is_failed()
        assert handle.probe is not None
        handle.probe.check_once()  # in this thread, which sees the test's Prefect settings
        assert telemetry.force_flush(timeout_s=10)
    finally:
        handle.uninstall()
        telemetry.shutdown(timeout_s=10)

    def value(promql: str) -> float:
        result = stack.wait_for(promql, lambda r: len(r) == 1)
        assert result[0]["metric"]["tenant_id"] == "acme"
        return float(result[0]["value"][1])

    selector = f'job="{job}",tenant_id="acme"'
    flow_sel = f'{selector},flow="nightly"'
    assert value(f"agent_flows_executed_total{{{flow_sel}}}") == 2
    assert value(f"agent_flows_success_total{{{flow_sel}}}") == 1
    assert value(f"agent_flows_failed_total{{{flow_sel}}}") == 1
    # Task counters count the whole agent by default (OTEL_AGENTS_TASK_DETAIL).
    assert value(f"agent_tasks_executed_total{{{selector}}}") == 2
    assert value(f"agent_tasks_failed_total{{{selector}}}") == 0
    assert value(f"agent_task_retries_total{{{selector}}}") == 1
    # One histogram for the agent's flows: both runs, 10 boundaries from 1 s to 6 h.
    assert value(f"agent_flow_duration_seconds_count{{{selector}}}") == 2
    buckets = stack.wait_for(
        f"agent_flow_duration_seconds_bucket{{{selector}}}", lambda r: len(r) == 11
    )
    assert {b["metric"]["le"] for b in buckets} >= {"1", "60", "3600", "21600", "+Inf"}
    assert 0 < value(f"agent_last_flow_duration_seconds{{{flow_sel}}}") < 60
    assert value(f"agent_uptime_seconds{{{selector}}}") > 0
    assert value(f"agent_connected{{{selector}}}") == 1
    assert value(f'target_info{{{selector},service_version="7.1.0"}}') == 1
    # The series budget (docs/agents.md): 4 per flow + 21, target_info and the
    # gateway's two last-seen series included.
    stack.wait_for(
        f'count({{__name__=~"agent_last_seen.*",{selector}}})',
        lambda r: len(r) == 1 and r[0]["value"][1] == "2",
    )
    own = stack.query(f"count({{{selector}}})")
    assert int(own[0]["value"][1]) == 4 * 1 + 21
    for name, kind in [
        ("agent_flows_executed_total", "counter"),
        ("agent_flows_success_total", "counter"),
        ("agent_flows_failed_total", "counter"),
        ("agent_tasks_executed_total", "counter"),
        ("agent_last_flow_duration_seconds", "gauge"),
        ("agent_uptime_seconds", "gauge"),
        ("agent_connected", "gauge"),
        ("agent_flow_duration_seconds", "histogram"),
    ]:
        status, body = http_get(f"{stack.prometheus_url}/api/v1/metadata?metric={name}")
        assert status == 200
        assert [m["type"] for m in json.loads(body)["data"][name]] == [kind], name
    labels: set[str] = set()
    for series in stack.query(f'{{__name__=~"agent_.*",__name__!~"agent_last_seen.*",{selector}}}'):
        labels |= set(series["metric"])
    # The gateway's last-seen series say more about the agent process, never flows.
    for series in stack.query(f'{{__name__=~"agent_last_seen.*",{selector}}}'):
        assert set(series["metric"]) - {"__name__", *_pipeline_labels()} == {
            "job",
            "instance",
            "tenant_id",
            "state",
            "host",
            "version",
            "gateway",
        }
    assert labels <= {
        "__name__",
        "job",
        "instance",
        "tenant_id",
        "flow",
        "le",
        *_pipeline_labels(),
    }


def _pipeline_labels() -> set[str]:
    """Labels added on the way: the instrumentation scope (Collector), the scrape target
    (`collector`: which Collector, docs/scaling.md)."""
    return {
        "otel_scope_name",
        "otel_scope_version",
        "otel_scope_schema_url",
        "component",
        "collector",
    }
