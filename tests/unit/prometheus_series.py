"""The Prometheus series one agent's metrics become, counted as the pipeline makes them.

A model of the Collector's prometheus exporter (translation UnderscoreEscapingWithSuffixes,
Collector 0.165.0) for the instruments `otel_agents` creates, plus the series the
gateway adds per agent. tests/e2e/test_prefect_pipeline.py checks the same count
against a real Collector and Prometheus.

- a counter or gauge: one series per data point (attribute set);
- an explicit-bucket histogram: one `_bucket` per boundary, `le="+Inf"`, `_sum` and
  `_count` per data point;
- an exponential histogram: `_bucket{le="+Inf"}`, `_sum` and `_count` only (the
  exporter's text exposition has no other buckets for it, and Prometheus 2.42 reads text);
- `target_info`: one per agent (resource);
- the gateway's `<agent>_last_seen_seconds` and `<agent>_last_seen_timestamp_seconds`:
  two per agent.
"""

from __future__ import annotations

from opentelemetry.sdk.metrics.export import (
    ExponentialHistogram,
    Gauge,
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    MetricsData,
    Sum,
)

from otel_agents.etl import FLOW_DURATION_BUCKETS

Series = tuple[str, frozenset[tuple[str, str]]]

GATEWAY_SERIES_PER_AGENT = 2
"""connector_/agent_last_seen_seconds and their _timestamp_seconds form."""
_UNIT_WORDS = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "d": "days"}
_GATEWAY_PREFIX = {"connector": "connector", "etl": "agent"}


def prometheus_name(metric: Metric) -> str:
    """The otlptranslator's name for the units and kinds these instruments use."""
    name = metric.name.replace(".", "_")
    unit = metric.unit or ""
    word = _UNIT_WORDS.get(unit, "")
    if unit == "1" and isinstance(metric.data, Gauge):
        word = "ratio"
    if word and word not in name.split("_"):
        name += f"_{word}"
    if isinstance(metric.data, Sum) and metric.data.is_monotonic:
        name += "_total"
    return name


def _labels(attributes: object) -> frozenset[tuple[str, str]]:
    items = dict(attributes or {}).items()  # type: ignore[call-overload]
    return frozenset((str(k), str(v)) for k, v in items)


def _metric_series(metric: Metric, instance: frozenset[tuple[str, str]]) -> set[Series]:
    name = prometheus_name(metric)
    found: set[Series] = set()
    for point in metric.data.data_points:
        labels = _labels(point.attributes) | instance
        if isinstance(metric.data, Histogram):
            assert isinstance(point, HistogramDataPoint)
            bounds = [*(f"{b:g}" for b in point.explicit_bounds), "+Inf"]
        elif isinstance(metric.data, ExponentialHistogram):
            bounds = ["+Inf"]
        else:
            found.add((name, labels))
            continue
        found |= {(f"{name}_bucket", labels | {("le", le)}) for le in bounds}
        found |= {(f"{name}_sum", labels), (f"{name}_count", labels)}
    return found


def agent_series(data: MetricsData) -> set[Series]:
    """Every series of the agents in `data`: their own, `target_info` and the gateway's."""
    found: set[Series] = set()
    for resource_metrics in data.resource_metrics:
        attributes = resource_metrics.resource.attributes
        instance = frozenset({("instance", str(attributes.get("service.instance.id")))})
        found.add(("target_info", instance))
        prefix = _GATEWAY_PREFIX[str(attributes.get("agent.type"))]
        found.add((f"{prefix}_last_seen_seconds", instance))
        found.add((f"{prefix}_last_seen_timestamp_seconds", instance))
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                found |= _metric_series(metric, instance)
    return found


def collected_series(reader: InMemoryMetricReader) -> set[Series]:
    """`agent_series` of what `reader` collects now."""
    data = reader.get_metrics_data()
    assert data is not None
    return agent_series(data)


def names(series: set[Series]) -> set[str]:
    """The metric names among `series`."""
    return {name for name, _ in series}


# -- the published formula (docs/agents.md, "Series per agent") --------------------------

PER_AGENT = 1 + GATEWAY_SERIES_PER_AGENT
"""target_info, and the gateway's last-seen series (plain and _timestamp_seconds)."""


def connector_formula(error_types: int) -> int:
    """bytes, records, queries, uptime, connected, certificate expiry, one series per
    error_type, and PER_AGENT: 9 + error types."""
    return 6 + error_types + PER_AGENT


def data_agent_formula(
    flows: int, tasks_per_flow: int, *, task_detail: bool, histogram_buckets: int | None = None
) -> int:
    """4 per flow (executed, success, failed, last duration), 3 task counters per agent or
    per task of each flow, the histogram (buckets + `+Inf` + _sum + _count), uptime and
    connected, and PER_AGENT: 4F + 21, or 4F + 3FT + 18 with task detail."""
    buckets = len(FLOW_DURATION_BUCKETS) if histogram_buckets is None else histogram_buckets
    tasks = 3 * flows * tasks_per_flow if task_detail else 3
    return 4 * flows + tasks + (buckets + 3) + 2 + PER_AGENT
