"""The metric contract: the 15 instruments whose Prometheus names rules and dashboards use.

One row per instrument: its OpenTelemetry name, its kind, its unit and the name
Prometheus shows (the Collector's `UnderscoreEscapingWithSuffixes` translation).
Plain data, no OpenTelemetry import: the gateway reads it to keep these names (and
the library's other instruments) to their kind and unit whichever tenant sends them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "gauge", "histogram"]
"""counter: a monotonic cumulative sum; histogram: explicit or exponential buckets."""


@dataclass(frozen=True)
class ContractMetric:
    """One instrument of the contract."""

    name: str
    """OpenTelemetry instrument name."""
    kind: Kind
    unit: str
    """OpenTelemetry unit ("" for none)."""
    prometheus: str
    """The Prometheus name (a histogram's series add _bucket, _sum and _count)."""


CONTRACT: tuple[ContractMetric, ...] = (
    # Data Connector (otel_agents.connector, otel_agents.status)
    ContractMetric("connector.bytes_sent", "counter", "By", "connector_bytes_sent_total"),
    ContractMetric("connector.records_sent", "counter", "{record}", "connector_records_sent_total"),
    ContractMetric(
        "connector.queries_processed", "counter", "{query}", "connector_queries_processed_total"
    ),
    ContractMetric("connector.errors", "counter", "{error}", "connector_errors_total"),
    ContractMetric("connector.uptime", "gauge", "s", "connector_uptime_seconds"),
    ContractMetric("connector.connected", "gauge", "", "connector_connected"),
    ContractMetric(
        "connector.certificate_expiry", "gauge", "d", "connector_certificate_expiry_days"
    ),
    # Data Agent (otel_agents.etl, otel_agents.status)
    ContractMetric("agent.flows_executed", "counter", "{flow}", "agent_flows_executed_total"),
    ContractMetric("agent.flows_success", "counter", "{flow}", "agent_flows_success_total"),
    ContractMetric("agent.flows_failed", "counter", "{flow}", "agent_flows_failed_total"),
    ContractMetric("agent.tasks_executed", "counter", "{task}", "agent_tasks_executed_total"),
    ContractMetric("agent.last_flow_duration", "gauge", "s", "agent_last_flow_duration_seconds"),
    ContractMetric("agent.flow.duration", "histogram", "s", "agent_flow_duration_seconds"),
    ContractMetric("agent.uptime", "gauge", "s", "agent_uptime_seconds"),
    ContractMetric("agent.connected", "gauge", "", "agent_connected"),
)
"""Every instrument of the contract, in the order of docs/architecture.md."""

OTHER_INSTRUMENTS: tuple[ContractMetric, ...] = (
    ContractMetric("agent.tasks_failed", "counter", "{task}", "agent_tasks_failed_total"),
    ContractMetric("agent.task_retries", "counter", "{retry}", "agent_task_retries_total"),
)
"""The library's instruments outside the contract (no rule or dashboard reads them):
the gateway holds them to their kind and unit all the same."""
