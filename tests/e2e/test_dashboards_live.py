"""The Grafana dashboards against the live Prometheus of the stack.

Grafana itself does not run here; what it would send does: every panel query with
the dashboard variables substituted as Grafana substitutes them, and every
variable's query. Prometheus must accept each one (a parse or execution error
fails). A connector that sends data must then show in the Agents overview.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from dashboard_queries import dashboards, panels_of, prometheus_api, run_panel_query
from polling import poll

from otel_agents import connector_metrics, setup_metrics
from stack.local import LocalStack

pytestmark = pytest.mark.e2e

Keys = tuple[Path, dict[str, str]]


def _queries() -> list[Any]:
    cases = []
    for name, document in dashboards().items():
        for panel in panels_of(document):
            for query in panel.get("targets", []):
                cases.append(pytest.param(query, id=f"{name}:{panel['title']}:{query['refId']}"))
    return cases


@pytest.mark.parametrize("query", _queries())
def test_prometheus_accepts_every_panel_query(stack: LocalStack, query: dict[str, Any]) -> None:
    run_panel_query(stack, query)


def test_prometheus_answers_every_variable_query(stack: LocalStack) -> None:
    for document in dashboards().values():
        for variable in document["templating"]["list"]:
            definition = variable["query"]["query"]
            metric, _, label = definition.removeprefix("label_values(").rstrip(")").partition(", ")
            # Grafana's label_values(metric, label) is the series' label values API.
            values = prometheus_api(stack, f"/api/v1/label/{label}/values", **{"match[]": metric})
            assert isinstance(values, list)


def _table_row(
    stack: LocalStack, panel: dict[str, Any], keys: dict[str, str]
) -> dict[str, float | None]:
    """One row of a table panel: each column's value for the series with `keys`."""
    rename = panel["transformations"][1]["options"]["renameByName"]
    row: dict[str, float | None] = {}
    for query in panel["targets"]:
        column = rename[f"Value #{query['refId']}"]
        row[column] = None
        for series in run_panel_query(stack, query):
            if all(series["metric"].get(k) == v for k, v in keys.items()):
                row[column] = float(series["value"][1])
    return row


def test_a_connector_that_sends_shows_in_the_agents_overview(
    stack: LocalStack, tenant_keys: Keys
) -> None:
    _, keys = tenant_keys
    service = f"e2e-dash-connector-{uuid.uuid4().hex[:8]}"
    telemetry = setup_metrics(
        service,
        "connector",
        api_key=keys["acme"],
        endpoint=stack.gateway_grpc_endpoint,
        set_global=False,
    )
    counters = connector_metrics(telemetry)
    try:
        # A first export at 0, then the batch: Prometheus sees the counter rise, as
        # it does for a connector that has been running.
        assert telemetry.force_flush(10_000)
        stack.wait_for(f'connector_bytes_sent_total{{job="{service}"}}', lambda r: len(r) == 1)
        counters.record_batch(rows=10, nbytes=4096)
        # Flushed, not shut down: a clean stop would show the row as stopped.
        assert telemetry.force_flush(10_000)
        stack.wait_for(
            f'connector_bytes_sent_total{{job="{service}"}} == 4096', lambda r: len(r) == 1
        )

        panels = {panel["title"]: panel for panel in panels_of(dashboards()["agents-overview"])}
        keys_of_row = {"tenant_id": "acme", "service": service}

        # Status comes from a recording rule over last seen: one evaluation later.
        def complete() -> dict[str, Any] | None:
            row = _table_row(stack, panels["Connectors"], keys_of_row)
            filled = row["Status"] is not None and row["Last seen"] is not None
            return row if filled and row["Bytes sent (range)"] else None

        row = poll("the Connectors row with status, last seen and bytes", complete, 60, every=1.0)
        assert row["Status"] == 1.0, row  # 🟢 reporting
        assert row["Last seen"] is not None
        assert 0 <= row["Last seen"] < 120, row
        assert row["Bytes sent (range)"], row
    finally:
        telemetry.shutdown(timeout_s=10)

    # Recording rules run every 10 s: the panel over them follows within one round.
    [traffic] = panels["Data sent per tenant"]["targets"]
    poll(
        "acme in the panel over the recording rules",
        lambda: (
            "acme" in {series["metric"]["tenant_id"] for series in run_panel_query(stack, traffic)}
        ),
        60,
        every=1.0,
    )
    [known] = [
        t for t in panels["Reporting / known agents"]["targets"] if t["legendFormat"] == "known"
    ]
    assert float(run_panel_query(stack, known)[0]["value"][1]) >= 1
