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
    yield etl_metrics(telemetry, version="2.0.1"), reader
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
        "agent_info": "Gauge",
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
    found = metrics_by_name(reader)
    assert values(found["agent.flows_executed"]) == {
        frozenset({("flow", "nightly"), ("state", "completed")}): 2,
        frozenset({("flow", "nightly"), ("state", "failed")}): 1,
        frozenset({("flow", "nightly"), ("state", "crashed")}): 1,
        frozenset({("flow", "nightly"), ("state", "cancelled")}): 1,
    }
    assert values(found["agent.flows_success"]) == {frozenset({("flow", "nightly")}): 2}
    assert values(found["agent.flows_failed"]) == {frozenset({("flow", "nightly")}): 2}
    assert values(found["agent.last_flow_duration"]) == {frozenset({("flow", "nightly")}): 3.0}
    histogram = found["agent.flow.duration"].data
    assert isinstance(histogram, Histogram)
    assert tuple(histogram.data_points[0].explicit_bounds) == FLOW_DURATION_BUCKETS


def test_tasks_retries_and_a_task_outside_any_flow(
    etl: tuple[EtlMetrics, InMemoryMetricReader],
) -> None:
    metrics, reader = etl
    metrics.record_task_finished("load", "completed", flow_name="nightly", retries=1)
    metrics.record_task_finished("load", "crashed", flow_name="nightly")
    metrics.record_task_finished("ping", "completed")
    found = metrics_by_name(reader)
    in_flow = frozenset({("task", "load"), ("flow", "nightly")})
    executed = {k: v for k, v in values(found["agent.tasks_executed"]).items() if v}
    assert executed == {
        in_flow | {("state", "completed")}: 1,
        in_flow | {("state", "crashed")}: 1,
        frozenset({("task", "ping"), ("state", "completed")}): 1,
    }
    assert values(found["agent.tasks_failed"])[in_flow] == 1
    assert values(found["agent.task_retries"])[in_flow] == 1


def test_every_series_of_a_new_flow_starts_at_zero(
    etl: tuple[EtlMetrics, InMemoryMetricReader],
) -> None:
    metrics, reader = etl
    metrics.flow_started("nightly")
    metrics.task_started("extract", "nightly")
    found = metrics_by_name(reader)
    assert len(values(found["agent.flows_executed"])) == 4
    assert set(values(found["agent.flows_failed"]).values()) == {0}
    assert len(values(found["agent.tasks_executed"])) == 4
    assert set(values(found["agent.task_retries"]).values()) == {0}


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
    assert keys <= {"flow", "task", "state", "version"}


def test_gauge_kinds(etl: tuple[EtlMetrics, InMemoryMetricReader]) -> None:
    metrics, reader = etl
    metrics.record_flow_finished("nightly", "completed", 1.0)
    assert isinstance(metrics_by_name(reader)["agent.last_flow_duration"].data, Gauge)
