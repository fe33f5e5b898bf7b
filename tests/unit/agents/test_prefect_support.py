"""Support for the Prefect tests (no tests here): what a metric reader holds."""

from __future__ import annotations

from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)

Key = frozenset[tuple[str, str]]


def points(reader: InMemoryMetricReader, name: str) -> dict[Key, float]:
    """Value of every point of sum or gauge `name`, by its attributes."""
    result: dict[Key, float] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != name:
                    continue
                for point in metric.data.data_points:
                    assert isinstance(point, NumberDataPoint)
                    attributes = {k: str(v) for k, v in (point.attributes or {}).items()}
                    result[frozenset(attributes.items())] = point.value
    return result


def histogram_counts(reader: InMemoryMetricReader, name: str) -> dict[Key, int]:
    """Count of every point of histogram `name`, by its attributes."""
    result: dict[Key, int] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != name:
                    continue
                for point in metric.data.data_points:
                    assert isinstance(point, HistogramDataPoint)
                    attributes = {k: str(v) for k, v in (point.attributes or {}).items()}
                    result[frozenset(attributes.items())] = point.count
    return result


def key(**attributes: str) -> Key:
    """The attributes of one series."""
    return frozenset(attributes.items())


def nonzero(values: dict[Key, float]) -> dict[Key, float]:
    """Series that counted something (counters are started at 0 on first sight)."""
    return {k: v for k, v in values.items() if v}
