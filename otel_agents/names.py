"""The metric contract: the 15 instruments whose Prometheus names rules and dashboards use.

The library's instruments are declared here and nowhere else (otel_agents.connector,
.etl and .status, the gateway's legacy endpoint and namespace guard, the dashboards'
builder and the tests read them); each agent's last-seen series are the gateway's
own, declared with its other metrics in gateway/instruments.py.

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


SCOPE = "otel_agents"
"""The instrumentation scope (meter name) every instrument of the library reports under."""

# Data Connector (otel_agents.connector, otel_agents.status)
CONNECTOR_BYTES_SENT = ContractMetric(
    "connector.bytes_sent", "counter", "By", "connector_bytes_sent_total"
)
CONNECTOR_RECORDS_SENT = ContractMetric(
    "connector.records_sent", "counter", "{record}", "connector_records_sent_total"
)
CONNECTOR_QUERIES_PROCESSED = ContractMetric(
    "connector.queries_processed", "counter", "{query}", "connector_queries_processed_total"
)
CONNECTOR_ERRORS = ContractMetric(
    "connector.errors", "counter", "{error}", "connector_errors_total"
)
CONNECTOR_UPTIME = ContractMetric("connector.uptime", "gauge", "s", "connector_uptime_seconds")
CONNECTOR_CONNECTED = ContractMetric("connector.connected", "gauge", "", "connector_connected")
CONNECTOR_CERTIFICATE_EXPIRY = ContractMetric(
    "connector.certificate_expiry", "gauge", "d", "connector_certificate_expiry_days"
)
# Data Agent (otel_agents.etl, otel_agents.status)
AGENT_FLOWS_EXECUTED = ContractMetric(
    "agent.flows_executed", "counter", "{flow}", "agent_flows_executed_total"
)
AGENT_FLOWS_SUCCESS = ContractMetric(
    "agent.flows_success", "counter", "{flow}", "agent_flows_success_total"
)
AGENT_FLOWS_FAILED = ContractMetric(
    "agent.flows_failed", "counter", "{flow}", "agent_flows_failed_total"
)
AGENT_TASKS_EXECUTED = ContractMetric(
    "agent.tasks_executed", "counter", "{task}", "agent_tasks_executed_total"
)
AGENT_LAST_FLOW_DURATION = ContractMetric(
    "agent.last_flow_duration", "gauge", "s", "agent_last_flow_duration_seconds"
)
AGENT_FLOW_DURATION = ContractMetric(
    "agent.flow.duration", "histogram", "s", "agent_flow_duration_seconds"
)
AGENT_UPTIME = ContractMetric("agent.uptime", "gauge", "s", "agent_uptime_seconds")
AGENT_CONNECTED = ContractMetric("agent.connected", "gauge", "", "agent_connected")

STATUS: dict[str, tuple[ContractMetric, ContractMetric]] = {
    "connector": (CONNECTOR_UPTIME, CONNECTOR_CONNECTED),
    "agent": (AGENT_UPTIME, AGENT_CONNECTED),
}
"""The uptime and connected gauges (otel_agents.status) of each instrument prefix."""

CONTRACT: tuple[ContractMetric, ...] = (
    CONNECTOR_BYTES_SENT,
    CONNECTOR_RECORDS_SENT,
    CONNECTOR_QUERIES_PROCESSED,
    CONNECTOR_ERRORS,
    CONNECTOR_UPTIME,
    CONNECTOR_CONNECTED,
    CONNECTOR_CERTIFICATE_EXPIRY,
    AGENT_FLOWS_EXECUTED,
    AGENT_FLOWS_SUCCESS,
    AGENT_FLOWS_FAILED,
    AGENT_TASKS_EXECUTED,
    AGENT_LAST_FLOW_DURATION,
    AGENT_FLOW_DURATION,
    AGENT_UPTIME,
    AGENT_CONNECTED,
)
"""Every instrument of the contract, in the order of docs/architecture.md."""

AGENT_TASKS_FAILED = ContractMetric(
    "agent.tasks_failed", "counter", "{task}", "agent_tasks_failed_total"
)
AGENT_TASK_RETRIES = ContractMetric(
    "agent.task_retries", "counter", "{retry}", "agent_task_retries_total"
)
OTHER_INSTRUMENTS: tuple[ContractMetric, ...] = (AGENT_TASKS_FAILED, AGENT_TASK_RETRIES)
"""The library's instruments outside the contract (no rule or dashboard reads them):
the gateway holds them to their kind and unit all the same."""
