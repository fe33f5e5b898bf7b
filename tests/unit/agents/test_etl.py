"""EtlMetrics: instrument names, units and kinds (the Prometheus contract), values, labels."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    NumberDataPoint,
    Sum,
)

from otel_agents import setup_metrics
from otel_agents.etl import FLOW_DURATION_BUCKETS, EtlMetrics, etl_metrics


@pytest.fixture
def etl() -> Iterator[tuple[EtlMetrics, InMemoryMetricReader]]:
    reader = InMemoryMetricReader()
    telemetry = setup_metrics("data-agent", "etl", environ={}, reader=reader, set_global=False)
    yield etl_metrics(telemetry), reader
    telemetry.shutdown()


@pytest.fixture
def detailed() -> Iterator[tuple[EtlMetrics, InMemoryMetricReader]]:
    """With OTEL_AGENTS_TASK_DETAIL=true: task counters by flow and task."""
    reader = InMemoryMetricReader()
    environ = {"OTEL_AGENTS_TASK_DETAIL": "true"}
    telemetry = setup_metrics("data-agent", "etl", environ=environ, reader=reader, set_global=False)
    metrics = etl_metrics(telemetry)
    assert metrics.task_detail
    yield metrics, reader
    telemetry.shutdown()


def metrics_by_name(reader: InMemoryMetricReader) -> dict[str, Metric]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    }


def values(metric: Metric) -> dict[frozenset[tuple[str, object]], object]:
    result: dict[frozenset[tuple[str, object]], object] = {}
    for point in metric.data.data_points:
        attributes = frozenset((point.attributes or {}).items())
        if isinstance(point, HistogramDataPoint):
            result[attributes] = point.count
        else:
            assert isinstance(point, NumberDataPoint)
            result[attributes] = point.value
    return result


def prometheus_name(metric: Metric) -> str:
    """The otlptranslator rule (UnderscoreEscapingWithSuffixes) for these names and units."""
    name = metric.name.replace(".", "_")
    words = {"s": "seconds"}
    unit = words.get(metric.unit or "", "")
    if unit and unit not in name.split("_"):
        name += f"_{unit}"
    if isinstance(metric.data, Sum) and metric.data.is_monotonic:
        name += "_total"
    return name


def test_names_units_and_kinds_make_the_contracted_prometheus_names(
    etl: tuple[EtlMetrics, InMemoryMetricReader],
) -> None:
    metrics, reader = etl
    metrics.record_flow_finished("nightly", "completed", 12.5)
    metrics.record_task_finished("extract", "failed", flow_name="nightly", retries=2)
    metrics.status.set_connected(True)
    found = metrics_by_name(reader)
    names = {prometheus_name(m): type(m.data).__name__ for m in found.values()}
    assert names == {
        "agent_flows_executed_total": "Sum",
        "agent_flows_success_total": "Sum",
        "agent_flows_failed_total": "Sum",
        "agent_tasks_executed_total": "Sum",
        "agent_tasks_failed_total": "Sum",
        "agent_task_retries_total": "Sum",
        "agent_flow_duration_seconds": "Histogram",
        "agent_last_flow_duration_seconds": "Gauge",
        "agent_uptime_seconds": "Gauge",
        "agent_connected": "Gauge",
    }
    for metric in found.values():
        if isinstance(metric.data, Sum | Histogram):
            assert metric.data.aggregation_temporality == AggregationTemporality.CUMULATIVE
        # `{flow}`-style units are dropped by the translator; "1" would add `_ratio`.
        assert (metric.unit or "") in ("", "s") or (metric.unit or "").startswith("{")


def test_flow_outcomes(etl: tuple[EtlMetrics, InMemoryMetricReader]) -> None:
    metrics, reader = etl
    for state in ("completed", "completed", "failed", "crashed", "cancelled"):
        metrics.record_flow_finished("nightly", state, 3.0)
    metrics.record_flow_finished("hourly", "completed", 40.0)
    found = metrics_by_name(reader)
    nightly, hourly = frozenset({("flow", "nightly")}), frozenset({("flow", "hourly")})
    # One series per flow whatever the states: cancelled = executed - success - failed.
    assert values(found["agent.flows_executed"]) == {nightly: 5, hourly: 1}
    assert values(found["agent.flows_success"]) == {nightly: 2, hourly: 1}
    assert values(found["agent.flows_failed"]) == {nightly: 2, hourly: 0}
    assert values(found["agent.last_flow_duration"]) == {nightly: 3.0, hourly: 40.0}
    # One histogram for the agent: every flow's runs, 10 boundaries from 1 s to 6 h.
    histogram = found["agent.flow.duration"].data
    assert isinstance(histogram, Histogram)
    [point] = histogram.data_points
    assert (point.attributes, point.count, point.sum) == ({}, 6, 55.0)
    assert tuple(point.explicit_bounds) == FLOW_DURATION_BUCKETS
    assert len(FLOW_DURATION_BUCKETS) == 10
    assert (FLOW_DURATION_BUCKETS[0], FLOW_DURATION_BUCKETS[-1]) == (1.0, 6 * 3600.0)


def _record_tasks(metrics: EtlMetrics) -> None:
    metrics.record_task_finished("load", "completed", flow_name="nightly", retries=1)
    metrics.record_task_finished("load", "crashed", flow_name="nightly")
    metrics.record_task_finished("extract", "cancelled", flow_name="hourly")
    metrics.record_task_finished("ping", "completed")


def test_task_counters_count_the_whole_agent_by_default(
    etl: tuple[EtlMetrics, InMemoryMetricReader],
) -> None:
    metrics, reader = etl
    _record_tasks(metrics)
    found = metrics_by_name(reader)
    assert values(found["agent.tasks_executed"]) == {frozenset(): 4}
    assert values(found["agent.tasks_failed"]) == {frozenset(): 1}
    assert values(found["agent.task_retries"]) == {frozenset(): 1}


def test_task_detail_counts_each_task_of_each_flow_and_tasks_outside_any_flow(
    detailed: tuple[EtlMetrics, InMemoryMetricReader],
) -> None:
    metrics, reader = detailed
    _record_tasks(metrics)
    found = metrics_by_name(reader)
    load = frozenset({("task", "load"), ("flow", "nightly")})
    extract = frozenset({("task", "extract"), ("flow", "hourly")})
    ping = frozenset({("task", "ping")})
    assert values(found["agent.tasks_executed"]) == {load: 2, extract: 1, ping: 1}
    assert values(found["agent.tasks_failed"]) == {load: 1, extract: 0, ping: 0}
    assert values(found["agent.task_retries"]) == {load: 1, extract: 0, ping: 0}


def test_every_series_of_a_new_flow_starts_at_zero(
    etl: tuple[EtlMetrics, InMemoryMetricReader],
) -> None:
    metrics, reader = etl
    metrics.flow_started("nightly")
    metrics.task_started("extract", "nightly")
    metrics.task_started("load", "nightly")
    found = metrics_by_name(reader)
    for name in ("agent.flows_executed", "agent.flows_success", "agent.flows_failed"):
        assert values(found[name]) == {frozenset({("flow", "nightly")}): 0}, name
    for name in ("agent.tasks_executed", "agent.tasks_failed", "agent.task_retries"):
        assert values(found[name]) == {frozenset(): 0}, name


def test_unknown_state_is_dropped_with_one_warning(
    etl: tuple[EtlMetrics, InMemoryMetricReader], caplog: pytest.LogCaptureFixture
) -> None:
    metrics, reader = etl
    caplog.set_level(logging.WARNING, logger="otel_agents")
    metrics.record_flow_finished("nightly", "Running", 1.0)
    metrics.record_flow_finished("nightly", "Running", 1.0)
    assert "agent.flows_executed" not in metrics_by_name(reader)
    assert len([r for r in caplog.records if "'Running'" in r.getMessage()]) == 1


def test_no_run_ids_or_parameters_can_reach_a_label(
    etl: tuple[EtlMetrics, InMemoryMetricReader],
) -> None:
    metrics, reader = etl
    metrics.record_flow_finished("nightly", "completed", 1.0)
    metrics.record_task_finished("extract", "completed", flow_name="nightly")
    keys = {
        key
        for metric in metrics_by_name(reader).values()
        for point in metric.data.data_points
        for key in (point.attributes or {})
    }
    assert keys == {"flow"}


def test_gauge_kinds(etl: tuple[EtlMetrics, InMemoryMetricReader]) -> None:
    metrics, reader = etl
    metrics.record_flow_finished("nightly", "completed", 1.0)
    assert isinstance(metrics_by_name(reader)["agent.last_flow_duration"].data, Gauge)
