"""The counting side of the tracker: `EtlMetrics`, built when the first run needs them.

Where this sits: tracker ──(*sink*)──▶ EtlMetrics ──▶ OTLP/gRPC ──▶ gateway.

Built lazily so that the plugin, which runs in every process importing Prefect (CLI
commands included), starts an exporter only in processes that actually run flows.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace

from otel_agents.etl import EtlMetrics
from otel_agents.prefect.naming import AgentName
from otel_agents.setup import setup_metrics
from otel_agents.telemetry import AgentTelemetry

_logger = logging.getLogger(__name__)


class LazyMetrics:
    """`EtlMetrics` and their telemetry, built at the first call, then kept."""

    def __init__(
        self,
        name: AgentName,
        telemetry: AgentTelemetry | None,
        on_build: Callable[[AgentTelemetry, EtlMetrics], None],
    ) -> None:
        """Export through `telemetry`, or through `setup_metrics(name.service_name, "etl")`."""
        self._name = name
        self._given = telemetry
        self._on_build = on_build
        self._lock = threading.Lock()
        self._failed = False
        self.telemetry: AgentTelemetry | None = None
        self.metrics: EtlMetrics | None = None

    def adopt(self, telemetry: AgentTelemetry | None, name: AgentName) -> bool:
        """Use this telemetry and name instead, unless the metrics exist already."""
        with self._lock:
            if self.metrics is not None:
                return False
            self._given = telemetry or self._given
            self._name = name.over(self._name)
            return True

    def __call__(self) -> EtlMetrics | None:
        """The metrics, built now if needed; None if building them failed."""
        if self.metrics is not None or self._failed:
            return self.metrics
        with self._lock:
            if self.metrics is None and not self._failed:
                try:
                    name = self._name
                    if self._given is not None:  # the caller's telemetry names the agent
                        name = _named_by(name, self._given)
                    if (note := name.note()) is not None:
                        _logger.warning("%s", note)
                    # Not global: the host process may have, or later set, its own provider.
                    telemetry = self._given or setup_metrics(
                        name.service_name, "etl", service_version=name.version, set_global=False
                    )
                    metrics = EtlMetrics(telemetry.meter, task_detail=telemetry.config.task_detail)
                    self.telemetry, self.metrics = telemetry, metrics
                    self._on_build(telemetry, metrics)
                except Exception:
                    self._failed = True
                    _logger.exception("otel_agents: Prefect run metrics disabled: setup failed")
        return self.metrics


def _named_by(name: AgentName, telemetry: AgentTelemetry) -> AgentName:
    """The name of an agent exporting through the caller's telemetry, whose resource's
    `service.version` is the version Prometheus shows; a different one asked for is said."""
    shown = telemetry.service_version
    if name.version and telemetry.enabled and name.version != shown:
        _logger.warning(
            "otel_agents: version %r is not reported: the telemetry given to instrument() "
            "has service.version %r; pass service_version=%r to setup_metrics",
            name.version,
            shown,
            name.version,
        )
    if name.version is None and shown:
        return replace(name, name_from="argument", version=shown, version_from="argument")
    return replace(name, name_from="argument")


class MetricsSink:
    """A `RunSink` onto `EtlMetrics`."""

    def __init__(
        self,
        metrics: Callable[[], EtlMetrics | None],
        after_flow: Callable[[str], None] | None = None,
    ) -> None:
        """Record into `metrics()`; call `after_flow(run_id)` after each finished flow run."""
        self._metrics = metrics
        self._after_flow = after_flow

    def flow_started(self, flow_name: str) -> None:
        """See `RunSink`."""
        if (metrics := self._metrics()) is not None:
            metrics.flow_started(flow_name)

    def flow_finished(
        self, run_id: str, flow_name: str, state: str, duration_s: float | None
    ) -> None:
        """See `RunSink`."""
        if (metrics := self._metrics()) is not None:
            metrics.record_flow_finished(flow_name, state, duration_s)
        if self._after_flow is not None:
            self._after_flow(run_id)

    def task_started(self, task_name: str, flow_name: str | None) -> None:
        """See `RunSink`."""
        if (metrics := self._metrics()) is not None:
            metrics.task_started(task_name, flow_name)

    def task_finished(
        self, task_name: str, flow_name: str | None, state: str, retries: int
    ) -> None:
        """See `RunSink`."""
        if (metrics := self._metrics()) is not None:
            metrics.record_task_finished(task_name, state, flow_name=flow_name, retries=retries)
