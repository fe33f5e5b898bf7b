"""A clean stop says so: the final export carries `otel_agents.state=stopped`.

Where this sits: agent code ──(otel_agents: *lifecycle*)──▶ OTLP/gRPC ──▶ gateway.

The gateway marks an agent whose last export said "stopped" as stopped rather than
silent, so that on-call is paged for an agent that died (SIGKILL, out of memory,
a crash, a cut network) and not for one that was stopped on purpose (systemd,
Kubernetes or Docker stop it with SIGTERM) or a script that ended.

What counts as a clean stop, decided at the final export:

| how the process ends | final export | says stopped |
|---|---|---|
| end of the script, `sys.exit()`, Ctrl-C (SIGINT) | yes | yes |
| SIGTERM (see `otel_agents.signals`) | yes | yes |
| an uncaught exception out of a Prefect flow run (counted as a failed flow) | yes | yes |
| any other uncaught exception | yes | no: a crash |
| SIGKILL, out of memory, `os._exit`, power loss | no | no |
"""

from __future__ import annotations

import os
import sys
from types import TracebackType
from typing import Any

from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    ResourceMetrics,
)
from opentelemetry.sdk.resources import Resource

STATE_KEY = "otel_agents.state"
"""Resource attribute of the final export of a clean stop; the gateway reads it."""
STOPPED = "stopped"

# Frames of these files mean an exception came out of a Prefect flow run: the run
# was counted as failed, and a script ending that way has ended, not crashed.
_FLOW_RUN_FILES = (
    os.path.join("prefect", "flow_engine.py"),
    os.path.join("prefect", "flows.py"),
)


class StopAnnouncingExporter(MetricExporter):
    """Wraps an exporter; once `announce_stop()` is called, exports say "stopped"."""

    def __init__(self, inner: MetricExporter) -> None:
        """Delegate to `inner`, keeping its temporality and aggregation preferences."""
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self.inner = inner
        self._stopping = False
        self._last_result: MetricExportResult | None = None
        self._in_flight = 0  # only the reader's thread exports (one at a time)

    def announce_stop(self) -> None:
        """From now on (the final export of a shutdown), tell the gateway we stopped."""
        self._stopping = True

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        """Export, with the stop notice on the resource once announced."""
        if self._stopping:
            metrics_data = _with_stop_notice(metrics_data)
        self._in_flight += 1
        try:
            result = self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception:
            result = MetricExportResult.FAILURE
            raise
        finally:
            self._in_flight -= 1
            self._last_result = result
        return result

    def final_export_arrived(self) -> bool:
        """After a shutdown: False while an export is still on its way (the SDK gave up
        waiting for it) or when the last one failed: the latest totals never reached the
        gateway. The SDK's reader drops export results; this keeps them."""
        return self._in_flight == 0 and self._last_result is not MetricExportResult.FAILURE

    def after_fork_in_child(self) -> None:
        """In a forked child: an export the parent had in flight is not this process's."""
        self._in_flight = 0
        self._last_result = None

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Flush the wrapped exporter."""
        return self.inner.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Shut the wrapped exporter down."""
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)


def _with_stop_notice(metrics_data: MetricsData) -> MetricsData:
    notice = Resource({STATE_KEY: STOPPED})
    return MetricsData(
        resource_metrics=[
            ResourceMetrics(
                resource=rm.resource.merge(notice),
                scope_metrics=rm.scope_metrics,
                schema_url=rm.schema_url,
            )
            for rm in metrics_data.resource_metrics
        ]
    )


def exited_cleanly() -> bool:
    """At exit: False when an exception no one caught ends the process (a crash),
    unless it came out of a Prefect flow run (a failed flow, already counted)."""
    # The interpreter sets sys.last_value when it prints an uncaught exception.
    error = getattr(sys, "last_value", None)
    if error is None or isinstance(error, KeyboardInterrupt | SystemExit):
        return True
    return _raised_by_flow_run(error.__traceback__)


def _raised_by_flow_run(tb: TracebackType | None) -> bool:
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(_FLOW_RUN_FILES):
            return True
        tb = tb.tb_next
    return False
