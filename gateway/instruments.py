"""Every metric the gateway exposes on its own /metrics: the one table of their names.

Each row is an OpenTelemetry instrument and the Prometheus name it becomes on
/metrics (the exporter adds `_total` to counters and the unit's word), spelled
out so that a name seen in a rule, a dashboard or docs/gateway.md is found here
by grep. tests/unit/gateway/test_instruments.py checks each spelling against a
real scrape. The agents' metric names live with the agents (otel_agents); the
legacy reporter takes its names from there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from opentelemetry.metrics import CallbackOptions, Meter, Observation

Kind = Literal["counter", "up_down_counter", "gauge", "histogram"]
Callback = Callable[[CallbackOptions], Iterable[Observation]]


@dataclass(frozen=True)
class Instrument:
    """One metric of the gateway: its OpenTelemetry instrument and its Prometheus name."""

    name: str
    kind: Kind
    unit: str
    prometheus: str
    """The name on /metrics (a histogram's series add _bucket, _sum and _count)."""
    scope: str
    """The meter it is created on: the `otel_scope_name` label on /metrics."""
    description: str

    def observe(self, meter: Meter, *callbacks: Callback) -> None:
        """Create this observable instrument on `meter` (the one named `scope`), read
        by `callbacks`."""
        create = {
            "counter": meter.create_observable_counter,
            "up_down_counter": meter.create_observable_up_down_counter,
            "gauge": meter.create_observable_gauge,
        }[self.kind]
        create(self.name, list(callbacks), self.unit, self.description)


REQUESTS = Instrument(
    "gateway.requests",
    "counter",
    "{request}",
    "gateway_requests_total",
    "gateway",
    "Export requests by tenant, transport and outcome.",
)
REJECTIONS = Instrument(
    "gateway.rejections",
    "counter",
    "{request}",
    "gateway_rejections_total",
    "gateway",
    "Refused requests, and requests with dropped points, by tenant and reason.",
)
DATA_POINTS = Instrument(
    "gateway.data_points",
    "counter",
    "{data_point}",
    "gateway_data_points_total",
    "gateway",
    "Data points by tenant and outcome (forwarded, failed, rejected).",
)
AUTH_FAILURES = Instrument(
    "gateway.auth_failures",
    "counter",
    "{request}",
    "gateway_auth_failures_total",
    "gateway",
    "Requests without a valid credential, by transport and reason.",
)
FORWARD_DURATION = Instrument(
    "gateway.forward.duration",
    "histogram",
    "s",
    "gateway_forward_duration_seconds",
    "gateway",
    "Time to forward one request to the Collector.",
)
COLLECTOR_EXPORTS = Instrument(
    "gateway.collector.exports",
    "counter",
    "{export}",
    "gateway_collector_exports_total",
    "gateway.forwarder",
    "Exports sent to the Collector; each carries one or more requests.",
)
REQUESTS_IN_FLIGHT = Instrument(
    "gateway.requests.in_flight",
    "up_down_counter",
    "{request}",
    "gateway_requests_in_flight",
    "gateway",
    "Export requests being handled.",
)
ACTIVE_SERIES = Instrument(
    "gateway.active_series",
    "gauge",
    "{series}",
    "gateway_active_series",
    "gateway.limits",
    "Series per tenant seen within the active-series window.",
)
CONNECTOR_LAST_SEEN = Instrument(
    "connector.last_seen",
    "gauge",
    "s",
    "connector_last_seen_seconds",
    "otel_agents.gateway",
    "Seconds since the gateway last accepted data from this connector.",
)
CONNECTOR_LAST_SEEN_TIMESTAMP = Instrument(
    "connector.last_seen.timestamp",
    "gauge",
    "s",
    "connector_last_seen_timestamp_seconds",
    "otel_agents.gateway",
    "Unix time the gateway last accepted data from this connector "
    "(for one that was up, at the latest its own restart).",
)
AGENT_LAST_SEEN = Instrument(
    "agent.last_seen",
    "gauge",
    "s",
    "agent_last_seen_seconds",
    "otel_agents.gateway",
    "Seconds since the gateway last accepted data from this data agent.",
)
AGENT_LAST_SEEN_TIMESTAMP = Instrument(
    "agent.last_seen.timestamp",
    "gauge",
    "s",
    "agent_last_seen_timestamp_seconds",
    "otel_agents.gateway",
    "Unix time the gateway last accepted data from this data agent "
    "(for one that was up, at the latest its own restart).",
)
FLEET_AGENTS = Instrument(
    "gateway.fleet.agents",
    "gauge",
    "{agent}",
    "gateway_fleet_agents",
    "gateway.fleet",
    "Agents the gateway knows, by tenant, type and state.",
)
FLEET_AGENTS_OVER_BUDGET = Instrument(
    "gateway.fleet.agents_over_budget",
    "gauge",
    "{agent}",
    "gateway_fleet_agents_over_budget",
    "gateway.fleet",
    "Agents whose recent exports carried series over their SDK's cardinality limit "
    "(otel.metric.overflow=true), by tenant.",
)
STATE_STORE_UP = Instrument(
    "gateway.state_store.up",
    "gauge",
    "",
    "gateway_state_store_up",
    "gateway.state",
    "1 when the state store answered its last exchange (always 1 with the state in "
    "memory); 0: limits are each process's share and the fleet view is partial.",
)
STATE_STORE_REPLICAS = Instrument(
    "gateway.state_store.replicas",
    "gauge",
    "{process}",
    "gateway_state_store_replicas",
    "gateway.state",
    "Gateway processes sharing the state store, as last known (1 in memory).",
)

FLEET_AGENTS_CLASHING = Instrument(
    "gateway.fleet.agents_clashing",
    "gauge",
    "{agent}",
    "gateway_fleet_agents_clashing",
    "gateway.fleet",
    "Agents whose identity two live processes share (tenant, type, service, "
    "service_instance_id and the hosts seen); 1 per agent, absent when none.",
)

LAST_SEEN: dict[str, tuple[Instrument, Instrument]] = {
    "connector": (CONNECTOR_LAST_SEEN, CONNECTOR_LAST_SEEN_TIMESTAMP),
    "agent": (AGENT_LAST_SEEN, AGENT_LAST_SEEN_TIMESTAMP),
}
"""Per agent family (gateway.fleet): seconds since, and when, it was last seen."""

ALL: Sequence[Instrument] = (
    REQUESTS,
    REJECTIONS,
    DATA_POINTS,
    AUTH_FAILURES,
    FORWARD_DURATION,
    COLLECTOR_EXPORTS,
    REQUESTS_IN_FLIGHT,
    ACTIVE_SERIES,
    FLEET_AGENTS,
    FLEET_AGENTS_OVER_BUDGET,
    STATE_STORE_UP,
    STATE_STORE_REPLICAS,
    FLEET_AGENTS_CLASHING,
)
"""Every row of the gateway's /metrics, in the order docs/gateway.md lists them. The
last-seen rows are not there: gateway.fleet.series sends them to the Collectors."""
