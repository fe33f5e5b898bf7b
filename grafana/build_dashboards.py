"""Grafana dashboards as code: writes grafana/dashboards/*.json, the files Grafana loads.

    python -m grafana.build_dashboards          # after editing this file

Plain dictionaries in Grafana's dashboard JSON model, no dependency. The committed
JSON is what Grafana provisions (grafana/provisioning/dashboards/dashboards.yaml);
tests/unit/test_dashboards.py fails when it differs from what this script builds.
Recording rules named here (`tenant_service:...`, `pipeline:...`) are defined in
prometheus/rules/.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from otel_agents import names

Json = dict[str, Any]

OUT_DIR = Path(__file__).resolve().parent / "dashboards"
DATASOURCE: Json = {"type": "prometheus", "uid": "prometheus"}
"""The provisioned datasource (grafana/provisioning/datasources/prometheus.yaml)."""
SCHEMA_VERSION = 39
GRID_WIDTH = 24

TENANT = 'tenant_id=~"$tenant"'
"""The label matcher of the tenant selector."""
SERVICE_FROM_JOB = '"service", "$1", "job", "(.*)"'
"""label_replace arguments: an agent's job (its service.name) as `service`, the
label of the recording rules."""
INSTANCE_KEY = "tenant_id, service, instance"
"""The labels that name one agent in tables and alerts."""
GATEWAY = 'job="gateway"'
"""The gateway's own series: a tenant's series come through the Collector's job
under a job of the tenant's choosing, so platform panels select the scrape job."""
COLLECTOR = 'job="collector-telemetry"'
"""The Collector's own telemetry (otelcol_*)."""
SCRAPED = 'tenant_id=""'
"""`up` of a scrape target, never a tenant's series of that name."""


# The contract's Prometheus names (otel_agents.names, their one home).
AGENT_CONNECTED = names.AGENT_CONNECTED.prometheus
BYTES_SENT = names.CONNECTOR_BYTES_SENT.prometheus
CONNECTOR_CONNECTED = names.CONNECTOR_CONNECTED.prometheus
ERRORS = names.CONNECTOR_ERRORS.prometheus
FLOWS_EXECUTED = names.AGENT_FLOWS_EXECUTED.prometheus
FLOWS_FAILED = names.AGENT_FLOWS_FAILED.prometheus
FLOWS_SUCCESS = names.AGENT_FLOWS_SUCCESS.prometheus
FLOW_DURATION = names.AGENT_FLOW_DURATION.prometheus
LAST_FLOW_DURATION = names.AGENT_LAST_FLOW_DURATION.prometheus
TASKS_EXECUTED = names.AGENT_TASKS_EXECUTED.prometheus


# -- panels ------------------------------------------------------------------------------


def target(expr: str, legend: str = "", *, instant: bool = False, table: bool = False) -> Json:
    """One Prometheus query of a panel (its refId is set by the panel)."""
    return {
        "datasource": DATASOURCE,
        "expr": expr,
        "format": "table" if table else "time_series",
        "instant": instant or table,
        "legendFormat": legend,
        "range": not (instant or table),
        "refId": "",
    }


def _thresholds(*steps: tuple[str, float | None]) -> Json:
    return {
        "mode": "absolute",
        "steps": [{"color": color, "value": value} for color, value in steps],
    }


GREEN_ONLY = _thresholds(("green", None))


def _panel(
    kind: str, title: str, description: str, targets: list[Json], size: tuple[int, int]
) -> Json:
    for index, item in enumerate(targets):
        item["refId"] = chr(ord("A") + index)
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": targets,
        "gridPos": {"w": size[0], "h": size[1]},
    }


def timeseries(
    title: str,
    description: str,
    targets: list[Json],
    unit: str = "short",
    width: int = 12,
    *,
    stacked: bool = False,
) -> Json:
    """A graph over time."""
    panel = _panel("timeseries", title, description, targets, (width, 8))
    panel["fieldConfig"] = {
        "defaults": {
            "unit": unit,
            "min": 0,
            "custom": {
                "drawStyle": "line",
                "fillOpacity": 20 if stacked else 5,
                "lineWidth": 1,
                "showPoints": "never",
                "stacking": {"mode": "normal" if stacked else "none", "group": "A"},
            },
        },
        "overrides": [],
    }
    panel["options"] = {
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return panel


def stat(
    title: str,
    description: str,
    targets: list[Json],
    unit: str = "short",
    width: int = 4,
    thresholds: Json = GREEN_ONLY,
    mappings: list[Json] | None = None,
) -> Json:
    """One number (the latest value) per query."""
    panel = _panel("stat", title, description, targets, (width, 4))
    panel["fieldConfig"] = {
        "defaults": {"unit": unit, "thresholds": thresholds, "mappings": mappings or []},
        "overrides": [],
    }
    panel["options"] = {
        "colorMode": "background",
        "graphMode": "none",
        "justifyMode": "center",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "textMode": "auto",
    }
    return panel


def bargauge(
    title: str, description: str, targets: list[Json], unit: str, thresholds: Json, width: int = 12
) -> Json:
    """One bar per series, coloured by thresholds."""
    panel = _panel("bargauge", title, description, targets, (width, 8))
    panel["fieldConfig"] = {
        "defaults": {"unit": unit, "min": 0, "thresholds": thresholds},
        "overrides": [],
    }
    panel["options"] = {
        "displayMode": "basic",
        "orientation": "horizontal",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "showUnfilled": True,
    }
    return panel


def table(
    title: str,
    description: str,
    columns: dict[str, tuple[str, str]],
    keys: dict[str, str],
    width: int = 24,
    mappings: dict[str, list[Json]] | None = None,
) -> Json:
    """A table joining instant queries on their labels.

    `keys` maps label names to column titles; `columns` maps each value column's
    title to (PromQL, unit). Every query must return exactly the `keys` labels (an
    aggregation `by` them): the merge joins rows on all label columns.
    """
    targets = [target(expr, table=True) for expr, _ in columns.values()]
    panel = _panel("table", title, description, targets, (width, 8))
    values = {f"Value #{chr(ord('A') + index)}": name for index, name in enumerate(columns)}
    rename = {**keys, **values}
    overrides = [
        {
            "matcher": {"id": "byName", "options": name},
            "properties": [{"id": "unit", "value": unit}],
        }
        for name, (_, unit) in columns.items()
    ]
    for name, value_mappings in (mappings or {}).items():
        overrides.append(
            {
                "matcher": {"id": "byName", "options": name},
                "properties": [
                    {"id": "mappings", "value": value_mappings},
                    {"id": "custom.cellOptions", "value": {"type": "auto"}},
                ],
            }
        )
    panel["fieldConfig"] = {"defaults": {"thresholds": GREEN_ONLY}, "overrides": overrides}
    panel["options"] = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}
    panel["transformations"] = [
        {"id": "merge", "options": {}},
        {
            "id": "organize",
            "options": {
                "excludeByName": {"Time": True},
                "indexByName": {name: i for i, name in enumerate([*keys, *values])},
                "renameByName": rename,
            },
        },
    ]
    return panel


def row(title: str) -> Json:
    """A section header."""
    return {
        "type": "row",
        "title": title,
        "collapsed": False,
        "panels": [],
        "gridPos": {"w": GRID_WIDTH, "h": 1},
    }


def value_mapping(texts: dict[str, tuple[str, str]]) -> list[Json]:
    """Grafana value mappings: value → (text, colour)."""
    return [
        {
            "type": "value",
            "options": {
                value: {"text": text, "color": color, "index": index}
                for index, (value, (text, color)) in enumerate(texts.items())
            },
        }
    ]


STATUS = value_mapping(
    {"1": ("🟢 up", "green"), "0": ("🔴 silent", "red"), "2": ("⚪ stopped", "text")}
)
CONNECTED = value_mapping({"1": ("connected", "green"), "0": ("disconnected", "red")})
UP = value_mapping({"1": ("up", "green"), "0": ("down", "red")})


def tenant_variable(metric: str) -> Json:
    """The tenant selector: every tenant_id of `metric`, several or all at once."""
    query = f"label_values({metric}, tenant_id)"
    return {
        "name": "tenant",
        "label": "Tenant",
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": "tenant"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
        "options": [],
    }


def dashboard(
    uid: str, title: str, description: str, panels: list[Json], variables: list[Json]
) -> Json:
    """A dashboard with `panels` laid out left to right, top to bottom."""
    x = y = line_height = 0
    for number, panel in enumerate(panels, start=1):
        pos = panel["gridPos"]
        if panel["type"] == "row" or x + pos["w"] > GRID_WIDTH:
            x, y, line_height = 0, y + line_height, 0
        pos.update(x=x, y=y)
        panel["id"] = number
        x += pos["w"]
        line_height = max(line_height, pos["h"])
        if panel["type"] == "row":
            x, y, line_height = 0, y + pos["h"], 0
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["agents-pipeline"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "browser",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "annotations": {"list": []},
        "links": [
            {
                "type": "dashboards",
                "tags": ["agents-pipeline"],
                "asDropdown": False,
                "title": "Dashboards",
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "templating": {"list": variables},
        "panels": panels,
    }


# -- Agents overview ---------------------------------------------------------------------


def _agents_status_table(
    family: str, title: str, noun: str, extra: dict[str, tuple[str, str]]
) -> Json:
    seen = f"{family}_last_seen_seconds{{{TENANT}}}"
    age = f"tenant_service_instance:{family}_last_seen_age_seconds{{{TENANT}}}"
    threshold = "pipeline:agent_silence_threshold_seconds"
    columns = {
        "Status": (
            f"max by ({INSTANCE_KEY}) ({age} <= bool on () group_left () {threshold})"
            f" or max by ({INSTANCE_KEY}) "
            f'(label_replace({seen[:-1]}, state="stopped"}}, {SERVICE_FROM_JOB}) * 0 + 2)',
            "none",
        ),
        "Last seen": (
            f'max by ({INSTANCE_KEY}) (label_replace({seen[:-1]}, state!="retired"}}, '
            f"{SERVICE_FROM_JOB}))",
            "s",
        ),
        **extra,
    }
    return table(
        title,
        f"One row per {noun} instance (tenant, service.name and service.instance.id, "
        "which stays the same across restarts) the gateway has heard from in the last 7 "
        "days and not retired. Silent: running, but nothing received for longer than "
        "pipeline:agent_silence_threshold_seconds (the silence alert's threshold); stopped: "
        "its last export said it stopped cleanly. Last seen: seconds ago.",
        columns,
        {"tenant_id": "Tenant", "service": noun.capitalize(), "instance": "Instance"},
        mappings={"Status": STATUS, **({"Upstream": CONNECTED} if "Upstream" in extra else {})},
    )


def _by_service(expr: str, aggregation: str = "sum", labels: str = "tenant_id, service") -> str:
    return f"{aggregation} by ({labels}) (label_replace({expr}, {SERVICE_FROM_JOB}))"


def _by_instance(expr: str, aggregation: str = "sum") -> str:
    return _by_service(expr, aggregation, INSTANCE_KEY)


def agents_overview() -> Json:
    """Connectors and data agents per tenant, and the fleet as a whole."""
    fleet = [
        row("Fleet"),
        stat(
            "Agents reporting",
            "Share of the agents the gateway knows (seen in the last 7 days) that it heard "
            "from within the silence threshold. Every tenant.",
            [target("pipeline:agents_reporting:ratio", instant=True)],
            unit="percentunit",
            thresholds=_thresholds(("red", None), ("orange", 0.9), ("green", 1)),
        ),
        stat(
            "Reporting / known agents",
            "Agents heard from within the silence threshold, and all agents the gateway knows.",
            [
                target("pipeline:agents_reporting:count", "reporting", instant=True),
                target("pipeline:agents_known:count", "known", instant=True),
            ],
            width=5,
            thresholds=_thresholds(("blue", None)),
        ),
        stat(
            "Fresh in Prometheus",
            "End-to-end freshness: agents whose series in Prometheus changed in the last "
            "2 minutes. Lower than 'reporting' means data stops between the gateway and "
            "Prometheus (alert NoAgentData at zero).",
            [target("pipeline:agents_fresh_end_to_end:count", instant=True)],
            width=5,
            thresholds=_thresholds(("red", None), ("green", 1)),
        ),
        stat(
            "Newest data at the gateway",
            "Seconds since the gateway last received data from any agent of the selected tenants.",
            [
                target(
                    'min({__name__=~"tenant_service_instance:(connector|agent)_last_seen_age_seconds",'
                    f" {TENANT}}})",
                    instant=True,
                )
            ],
            unit="s",
            width=5,
            thresholds=_thresholds(("green", None), ("orange", 60), ("red", 120)),
        ),
        stat(
            "Firing alerts",
            "Alerts firing now for the selected tenants, and the pipeline's own.",
            [target(f'count(ALERTS{{alertstate="firing", {TENANT}}}) or vector(0)', instant=True)],
            width=5,
            thresholds=_thresholds(("green", None), ("red", 1)),
        ),
    ]
    connectors = [
        row("Data Connectors"),
        _agents_status_table(
            "connector",
            "Connectors",
            "connector",
            {
                "Upstream": (_by_instance(f"{CONNECTOR_CONNECTED}{{{TENANT}}}", "max"), "none"),
                "Bytes sent (range)": (
                    _by_instance(f"increase({BYTES_SENT}{{{TENANT}}}[$__range])"),
                    "bytes",
                ),
                "Certificate expires in": (
                    f"min by ({INSTANCE_KEY}) "
                    f"(tenant_service_instance:connector_certificate_expiry_days:min{{{TENANT}}})",
                    "d",
                ),
            },
        ),
        timeseries(
            "Data sent per tenant",
            "Bytes of record data the connectors sent, per second (2-minute rate).",
            [
                target(
                    f"sum by (tenant_id) (tenant_service:connector_bytes_sent:rate2m{{{TENANT}}})",
                    "{{tenant_id}}",
                )
            ],
            unit="Bps",
            stacked=True,
        ),
        timeseries(
            "Records sent per tenant",
            "Records the connectors sent, per second (2-minute rate).",
            [
                target(
                    "sum by (tenant_id) "
                    f"(tenant_service:connector_records_sent:rate2m{{{TENANT}}})",
                    "{{tenant_id}}",
                )
            ],
            unit="cps",
            stacked=True,
        ),
        timeseries(
            "Queries processed",
            "Queries the connectors processed, per second, per tenant and connector.",
            [
                target(
                    f"tenant_service:connector_queries_processed:rate2m{{{TENANT}}}",
                    "{{tenant_id}} / {{service}}",
                )
            ],
            unit="cps",
        ),
        timeseries(
            "Connector errors by type",
            "Errors per second by tenant and error_type. Alert ConnectorErrorRateHigh: 3 or "
            "more errors in 5 minutes and over 5 % of the queries processed.",
            [
                target(
                    "sum by (tenant_id, error_type) "
                    f"(rate({ERRORS}{{{TENANT}}}[$__rate_interval]))",
                    "{{tenant_id}} {{error_type}}",
                )
            ],
            unit="cps",
        ),
        bargauge(
            "Certificate expiry",
            "Days until each connector's certificate expires (warning under 14, critical under 3).",
            [
                target(
                    f"tenant_service_instance:connector_certificate_expiry_days:min{{{TENANT}}}",
                    "{{tenant_id}} / {{service}} / {{instance}}",
                    instant=True,
                )
            ],
            unit="d",
            thresholds=_thresholds(("red", None), ("orange", 3), ("green", 14)),
            width=24,
        ),
    ]
    flows_key = "tenant_id, service, flow"
    succeeded = _by_service(f"increase({FLOWS_SUCCESS}{{{TENANT}}}[$__range])", labels=flows_key)
    failed = _by_service(f"increase({FLOWS_FAILED}{{{TENANT}}}[$__range])", labels=flows_key)
    executed = _by_service(f"increase({FLOWS_EXECUTED}{{{TENANT}}}[$__range])", labels=flows_key)
    data_agents = [
        row("Data Agents"),
        _agents_status_table(
            "agent",
            "Data agents",
            "data agent",
            {"Upstream": (_by_instance(f"{AGENT_CONNECTED}{{{TENANT}}}", "max"), "none")},
        ),
        table(
            "Flows (selected range)",
            "Runs of each flow in the selected time range; success rate = succeeded / executed.",
            {
                "Succeeded": (f"{succeeded} or {executed} * 0", "none"),
                "Failed": (f"{failed} or {executed} * 0", "none"),
                "Success rate": (f"({succeeded} or {executed} * 0) / {executed}", "percentunit"),
            },
            {"tenant_id": "Tenant", "service": "Data agent", "flow": "Flow"},
        ),
        timeseries(
            "Flow runs per minute",
            "Flow runs that succeeded and failed, per minute, per tenant.",
            [
                target(
                    "sum by (tenant_id) "
                    f"(rate({FLOWS_SUCCESS}{{{TENANT}}}[$__rate_interval])) * 60",
                    "{{tenant_id}} succeeded",
                ),
                target(
                    f"sum by (tenant_id) (rate({FLOWS_FAILED}{{{TENANT}}}[$__rate_interval])) * 60",
                    "{{tenant_id}} failed",
                ),
            ],
            unit="short",
        ),
        timeseries(
            "Flow success rate (last hour)",
            "Share of flow runs that succeeded in the hour before each point, per tenant.",
            [
                target(
                    f"sum by (tenant_id) (increase({FLOWS_SUCCESS}{{{TENANT}}}[1h]))"
                    f" / sum by (tenant_id) (increase({FLOWS_EXECUTED}{{{TENANT}}}[1h]))",
                    "{{tenant_id}}",
                )
            ],
            unit="percentunit",
        ),
        timeseries(
            "Last flow duration",
            "Duration of the most recent run of each flow, per tenant and data agent.",
            [
                target(
                    _by_service(
                        f"{LAST_FLOW_DURATION}{{{TENANT}}}",
                        "max",
                        "tenant_id, service, flow",
                    ),
                    "{{tenant_id}} / {{service}} / {{flow}}",
                )
            ],
            unit="s",
        ),
        timeseries(
            "Flow duration, 95th percentile (last hour)",
            f"From the {FLOW_DURATION} histogram, which holds every flow of a data "
            "agent (buckets from 1 s to 6 h), per tenant and data agent. Each flow's own "
            "duration: Last flow duration.",
            [
                target(
                    "histogram_quantile(0.95, "
                    + _by_service(
                        f"rate({FLOW_DURATION}_bucket{{{TENANT}}}[1h])",
                        labels="tenant_id, service, le",
                    )
                    + ")",
                    "{{tenant_id}} / {{service}}",
                )
            ],
            unit="s",
        ),
        timeseries(
            "Tasks executed per minute",
            f"Prefect task runs per minute, per tenant ({TASKS_EXECUTED} counts per "
            "data agent; per flow and task with OTEL_AGENTS_TASK_DETAIL=true).",
            [
                target(
                    "sum by (tenant_id) "
                    f"(rate({TASKS_EXECUTED}{{{TENANT}}}[$__rate_interval])) * 60",
                    "{{tenant_id}}",
                )
            ],
            unit="short",
            width=24,
        ),
    ]
    return dashboard(
        "agents-overview",
        "Agents overview",
        "Data Connectors and Data Agents per tenant: are they reporting, what they send, "
        "how their flows do. Alerts and runbooks: docs/operations.md.",
        fleet + connectors + data_agents,
        [tenant_variable(f"gateway_data_points_total{{{GATEWAY}}}")],
    )


# -- Gateway -----------------------------------------------------------------------------


def gateway() -> Json:
    """The gateway and the Collector behind it."""
    rate = "[$__rate_interval]"
    health = [
        row("Health"),
        stat(
            "Gateway",
            "Whether Prometheus can scrape every gateway (alert GatewayDown).",
            [target(f"min(up{{{GATEWAY}, {SCRAPED}}})", instant=True)],
            thresholds=_thresholds(("red", None), ("green", 1)),
            mappings=UP,
        ),
        stat(
            "Collector",
            "Whether Prometheus can scrape the Collector (alert CollectorDown).",
            [target(f'min(up{{job="collector", {SCRAPED}}})', instant=True)],
            thresholds=_thresholds(("red", None), ("green", 1)),
            mappings=UP,
        ),
        stat(
            "Requests",
            "Export requests per second, every tenant and transport.",
            [target(f"sum(rate(gateway_requests_total{{{GATEWAY}}}{rate}))", instant=True)],
            unit="reqps",
        ),
        stat(
            "Rejected",
            "Share of the selected tenants' requests the gateway refused.",
            [
                target(
                    "(sum(rate("
                    f"gateway_rejections_total{{{GATEWAY}, {TENANT}}}{rate})) or vector(0))"
                    f" / sum(rate(gateway_requests_total{{{GATEWAY}, {TENANT}}}{rate}))",
                    instant=True,
                )
            ],
            unit="percentunit",
            thresholds=_thresholds(("green", None), ("orange", 0.001), ("red", 0.01)),
        ),
        stat(
            "In flight",
            "Export requests being handled right now.",
            [target(f"sum(gateway_requests_in_flight{{{GATEWAY}}})", instant=True)],
        ),
        stat(
            "Forward p99",
            "99th percentile of the time to forward a request to the Collector.",
            [
                target(
                    "histogram_quantile(0.99, sum by (le) "
                    f"(rate(gateway_forward_duration_seconds_bucket{{{GATEWAY}}}{rate})))",
                    instant=True,
                )
            ],
            unit="s",
            thresholds=_thresholds(("green", None), ("orange", 0.5), ("red", 2)),
        ),
    ]
    requests = [
        row("Requests"),
        timeseries(
            "Requests by outcome",
            "Export requests per second of the selected tenants, by outcome.",
            [
                target(
                    f"sum by (outcome) (rate(gateway_requests_total{{{GATEWAY}, {TENANT}}}{rate}))",
                    "{{outcome}}",
                )
            ],
            unit="reqps",
            stacked=True,
        ),
        timeseries(
            "Requests by tenant and transport",
            "Export requests per second, by tenant and transport (tenant 'unknown': no valid key).",
            [
                target(
                    "sum by (tenant_id, transport) "
                    f"(rate(gateway_requests_total{{{GATEWAY}, {TENANT}}}{rate}))",
                    "{{tenant_id}} {{transport}}",
                )
            ],
            unit="reqps",
        ),
        timeseries(
            "Rejections by reason",
            "Refused requests per second by tenant and reason (docs/gateway.md lists the "
            "reasons). Alert GatewayRejectingTenantData.",
            [
                target(
                    "sum by (tenant_id, reason) "
                    f"(rate(gateway_rejections_total{{{GATEWAY}, {TENANT}}}{rate}))",
                    "{{tenant_id}} {{reason}}",
                )
            ],
            unit="reqps",
        ),
        timeseries(
            "Authentication failures",
            "Requests without a valid credential per second, by transport and reason "
            "(no tenant: the key named none).",
            [
                target(
                    "sum by (transport, reason) "
                    f"(rate(gateway_auth_failures_total{{{GATEWAY}}}{rate}))",
                    "{{transport}} {{reason}}",
                )
            ],
            unit="reqps",
        ),
        timeseries(
            "Data points by outcome",
            "Data points per second of the selected tenants: forwarded to the Collector, or not.",
            [
                target(
                    "sum by (outcome) "
                    f"(rate(gateway_data_points_total{{{GATEWAY}, {TENANT}}}{rate}))",
                    "{{outcome}}",
                )
            ],
            unit="cps",
            stacked=True,
        ),
        timeseries(
            "Forward latency",
            "Time to forward one request to the Collector: median, 95th and 99th percentile.",
            [
                target(
                    f"histogram_quantile({q}, sum by (le) "
                    f"(rate(gateway_forward_duration_seconds_bucket{{{GATEWAY}}}{rate})))",
                    f"p{round(q * 100)}",
                )
                for q in (0.5, 0.95, 0.99)
            ],
            unit="s",
        ),
        timeseries(
            "Requests in flight",
            "Export requests being handled, per gateway.",
            [
                target(
                    f"sum by (instance) (gateway_requests_in_flight{{{GATEWAY}}})", "{{instance}}"
                )
            ],
            width=24,
        ),
    ]
    collector = [
        row("Collector"),
        timeseries(
            "Collector: data points in",
            "Points the Collector's OTLP receiver accepted, refused (memory limiter: the "
            "gateway answers UNAVAILABLE, agents retry) and failed, per second.",
            [
                target(
                    f"sum(rate(otelcol_receiver_{outcome}_metric_points{{{COLLECTOR}}}{rate}))",
                    outcome,
                )
                for outcome in ("accepted", "refused", "failed")
            ],
            unit="cps",
        ),
        timeseries(
            "Collector: data points out and memory",
            "Points each exporter sent per second, and the Collector's resident memory.",
            [
                target(
                    "sum by (exporter) "
                    f"(rate(otelcol_exporter_sent_metric_points{{{COLLECTOR}}}{rate}))",
                    "sent by {{exporter}}",
                ),
                target(f"sum(otelcol_process_memory_rss{{{COLLECTOR}}})", "memory (bytes)"),
            ],
            unit="cps",
        ),
    ]
    memory = collector[-1]
    memory["fieldConfig"]["overrides"] = [
        {
            "matcher": {"id": "byName", "options": "memory (bytes)"},
            "properties": [
                {"id": "unit", "value": "bytes"},
                {"id": "custom.axisPlacement", "value": "right"},
            ],
        }
    ]
    return dashboard(
        "gateway",
        "Gateway",
        "The gateway (requests, rejections, latency) and the Collector behind it. "
        "Alerts and runbooks: docs/operations.md.",
        health + requests + collector,
        [tenant_variable(f"gateway_requests_total{{{GATEWAY}}}")],
    )


# -- files -------------------------------------------------------------------------------

DASHBOARDS = {"agents-overview.json": agents_overview, "gateway.json": gateway}


def render() -> dict[str, str]:
    """File name → the JSON text Grafana loads."""
    return {
        name: json.dumps(build(), indent=2, ensure_ascii=False, sort_keys=True) + "\n"
        for name, build in DASHBOARDS.items()
    }


def panels(document: Json) -> Iterator[Json]:
    """Every panel of a dashboard, rows' nested panels included."""
    for panel in document.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def main() -> int:
    """Write every dashboard; print what changed."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        path = OUT_DIR / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
