"""Names as the Collector makes them, and the table of names in use."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from opentelemetry.proto.metrics.v1 import metrics_pb2 as m

from gateway.labels import label_name
from gateway.namespace import MetricNamespace
from gateway.promnames import prometheus_name
from otel_agents.names import CONTRACT, OTHER_INSTRUMENTS

# Each expected value is what prometheus/otlptranslator v1.0.0 (the Collector
# 0.165.0 exporter's translator, UnderscoreEscapingWithSuffixes) returned for it.
TRANSLATED = [
    ("connector.errors", "{error}", "counter", "connector_errors_total"),
    ("connector.errors_total", "", "gauge", "connector_errors_total"),
    ("connector.uptime", "s", "gauge", "connector_uptime_seconds"),
    ("agent.connected", "1", "gauge", "agent_connected_ratio"),
    ("requests.total.count", "1", "counter", "requests_count_total"),
    ("queue.size", "1", "sum", "queue_size"),
    ("http.server.duration", "ms", "histogram", "http_server_duration_milliseconds"),
    ("io.rate", "By/s", "gauge", "io_rate_bytes_per_second"),
    ("a..b", "", "gauge", "a_b"),
    ("1abc", "", "gauge", "_1abc"),
    ("..", "", "gauge", ""),
    ("_", "", "gauge", ""),
    ("x", "x_", "counter", "x_x__total"),
    ("\uff58.load", "", "gauge", "load"),
    ("target", "info", "gauge", "target_info"),
    ("up", "", "counter", "up_total"),
    ("Connector-Last_Seen", "s", "gauge", "Connector_Last_Seen_seconds"),
    ("disk", "{x}/s", "gauge", "disk_per_second"),
    ("speed", "m/{x}", "gauge", "speed_meters"),
    ("rpc.latency", "s", "summary", "rpc_latency_seconds"),
    ("used", "%", "gauge", "used_percent"),
]
LABELS = [
    ("flow.name", "flow_name"),
    ("a__b", "a__b"),
    ("__name__", "__name__"),
    ("1a", "key_1a"),
    ("\u00e91", "_1"),
    ("\uff58", ""),
    (".", ""),
    ("-", ""),
    ("", ""),
]


@pytest.mark.parametrize(("name", "unit", "kind", "expected"), TRANSLATED)
def test_prometheus_names_are_the_translators(
    name: str, unit: str, kind: str, expected: str
) -> None:
    assert prometheus_name(name, unit, kind) == expected


@pytest.mark.parametrize(("key", "expected"), LABELS)
def test_label_names_are_the_exporters(key: str, expected: str) -> None:
    assert label_name(key) == expected


def test_the_contract_table_is_the_agents_instruments_and_their_prometheus_names() -> None:
    assert len(CONTRACT) == 15
    for row in CONTRACT + OTHER_INSTRUMENTS:
        assert prometheus_name(row.name, row.unit, row.kind) == row.prometheus


def test_the_contract_module_imports_nothing_of_opentelemetry() -> None:
    source = Path(__file__).parents[3] / "otel_agents" / "names.py"
    imported = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert imported <= {"__future__", "dataclasses", "typing"}


def _gauge(name: str, unit: str = "") -> tuple[m.Metric, str, m.Gauge]:
    metric = m.Metric(name=name, unit=unit, gauge=m.Gauge())
    return metric, "gauge", metric.gauge


def _counter(name: str, unit: str = "") -> tuple[m.Metric, str, m.Sum]:
    metric = m.Metric(name=name, unit=unit, sum=m.Sum(is_monotonic=True))
    return metric, "sum", metric.sum


def _histogram(name: str) -> tuple[m.Metric, str, m.Histogram]:
    metric = m.Metric(name=name, histogram=m.Histogram())
    return metric, "histogram", metric.histogram


def test_a_name_is_forgotten_once_idle_and_the_table_stays_bounded() -> None:
    names = MetricNamespace(max_names=3, idle_seconds=100.0)
    assert names.check(*_counter("app.a"), now=0.0) is None
    assert names.check(*_gauge("app.a.total"), now=50.0) is not None  # in use
    assert names.check(*_gauge("app.a.total"), now=101.0) is None  # app.a idle: forgotten
    for index in range(10):
        assert names.check(*_gauge(f"app.n{index}"), now=102.0 + index) is None
    assert len(names) == 3
    # The oldest went first: app.n0 may be taken as a histogram now, app.n9 may not.
    assert names.check(*_histogram("app.n0"), now=120.0) is None
    problem = names.check(*_histogram("app.n9"), now=120.0)
    assert problem is not None
    assert problem[0] == "metric_type_conflict"


def test_the_same_name_from_each_tenant_is_one_entry() -> None:
    names = MetricNamespace()
    for now in (1.0, 2.0, 3.0):
        assert names.check(*_gauge("app.level", "s"), now=now) is None
    assert len(names) == 1


def test_contract_names_are_checked_against_the_contract_not_noted() -> None:
    names = MetricNamespace()
    assert names.check(*_counter("connector.errors", "{error}"), now=0.0) is None
    assert names.check(*_gauge("agent.connected"), now=0.0) is None
    assert len(names) == 0
    problem = names.check(*_gauge("agent.connected", "1"), now=0.0)
    assert problem is not None
    assert "has unit '' in otel_agents' metrics, sent with '1'" in problem[1]
    problem = names.check(*_gauge("agent.flow.duration.seconds.count"), now=0.0)
    assert problem is not None
    assert "is a histogram of otel_agents' metrics" in problem[1]


def test_a_tenant_brings_at_most_its_quota_of_names_into_the_table() -> None:
    names = MetricNamespace(max_names=100, idle_seconds=100.0)
    for index in range(3):
        assert names.check(*_gauge(f"app.a{index}"), 0.0, "alpha", 3) is None
    problem = names.check(*_gauge("app.a3"), 1.0, "alpha", 3)
    assert problem is not None
    assert problem[0] == "metric_name_limit"
    assert "tenant 'alpha' has 3 metric names in use (limit max_metric_names=3)" in problem[1]
    # Names in use cost nothing more, whoever sends them; beta has its own quota.
    assert names.check(*_gauge("app.a0"), 2.0, "beta", 3) is None
    assert names.check(*_gauge("app.b0"), 2.0, "beta", 3) is None
    assert (names.owned("alpha"), names.owned("beta")) == (3, 1)
    # alpha's idle names make room for new ones (app.a0 was used by beta at 2.0).
    assert names.check(*_gauge("app.a3"), 101.5, "alpha", 3) is None
    assert names.owned("alpha") == 2
