"""Say once per instrument when it hits the SDK's cardinality limit.

Where this sits: agent code ──(otel_agents: exporter chain, *overflow warning*)──▶ OTLP/gRPC.

Past its cardinality limit (2,000 attribute sets per instrument by default) the SDK
merges the measurements of every new attribute set into one series marked
`otel.metric.overflow=true`, and says nothing. That usually means an attribute takes
unbounded values (an id, a path, a message): the data is still counted, but can no
longer be told apart, and the agent's series far exceed its budget. The check runs on
the export thread, never where the host records, and looks at each exported point's
attributes (a dictionary lookup per point).
"""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData

_logger = logging.getLogger(__name__)

OVERFLOW_ATTRIBUTE = "otel.metric.overflow"
"""The attribute the SDK puts on the series that collects measurements past the limit."""


def overflowed(metrics_data: MetricsData) -> list[tuple[str, str, int]]:
    """(scope, instrument, limit) of every instrument with an overflow series."""
    found = []
    for resource_metrics in metrics_data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                points = list(getattr(metric.data, "data_points", ()))
                if any((p.attributes or {}).get(OVERFLOW_ATTRIBUTE) for p in points):
                    # The limit counts the other series; the overflow one comes on top.
                    found.append((scope_metrics.scope.name, metric.name, len(points) - 1))
    return found


class OverflowWarning(MetricExporter):
    """Passes exports through; logs once per instrument that reached its cardinality limit."""

    def __init__(self, inner: MetricExporter) -> None:
        """Wrap `inner`, keeping its temporality and aggregation preferences."""
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self.inner = inner
        self._warned: set[tuple[str, str]] = set()

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        """Warn about new overflows, then export through the inner exporter."""
        try:
            self._warn(metrics_data)
        except Exception:  # a warning must never break exporting
            _logger.debug("otel_agents: checking for overflow failed", exc_info=True)
        return self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)

    def _warn(self, metrics_data: MetricsData) -> None:
        for scope, name, limit in overflowed(metrics_data):
            if (scope, name) in self._warned:
                continue
            self._warned.add((scope, name))
            _logger.warning(
                "otel_agents: instrument %r (meter %r) reached the SDK's limit of %d "
                "attribute sets; measurements with new attribute values are merged into one "
                "series with %s=true and can no longer be told apart. Give its attributes "
                "a small fixed set of values (never ids, names, paths or messages); see "
                "'Series per agent' in docs/agents.md (logged once per instrument)",
                name,
                scope,
                limit,
                OVERFLOW_ATTRIBUTE,
            )

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Flush the inner exporter."""
        return self.inner.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Shut the inner exporter down."""
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)
