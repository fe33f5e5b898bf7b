"""`instrument()`: count every Prefect flow and task run of this process and its children.

Where this sits: Prefect engines ──(*instrumentation*: tracker → sink)──▶ EtlMetrics
──▶ OTLP/gRPC ──▶ gateway.

A process plays one of two parts:

- **counting** (a script running flows, a `flow.serve()` runner, a worker): engines
  report to `EtlMetrics` in this process, and a spool directory is published in
  `OTEL_AGENTS_PREFECT_SPOOL` for the flow-run processes it starts;
- **spool writer** (a flow-run process started by such a runner or worker, found by the
  inherited variable): engines report to the spool; the parent counts.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import re
import threading
from typing import Literal

from otel_agents.etl import EtlMetrics
from otel_agents.prefect import engines
from otel_agents.prefect.children import SpoolReader, resolve_from_api
from otel_agents.prefect.naming import FALLBACK_SERVICE_NAME, AgentName, agent_name
from otel_agents.prefect.probe import ApiProbe
from otel_agents.prefect.sink import LazyMetrics, MetricsSink
from otel_agents.prefect.spool import SPOOL_ENV, SpoolWriter, inherited_spool, new_spool_dir
from otel_agents.prefect.tracker import RunTracker
from otel_agents.telemetry import AgentTelemetry

_logger = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = FALLBACK_SERVICE_NAME
"""Service name when nothing names the agent: no argument, no OTEL_SERVICE_NAME, no main
script (see `otel_agents.prefect.naming`)."""
FLOW_RUN_ID_ENV = "PREFECT__FLOW_RUN_ID"
"""Set by Prefect's runner and workers in the process of each flow run they start."""
FLUSH_TIMEOUT_S = 2.0
"""Longest wait for an export after a flow run, where a process exports per flow run."""

Mode = Literal["counting", "spool-writer", "disabled"]

_lock = threading.Lock()
_current: PrefectInstrumentation | None = None


class PrefectInstrumentation:
    """What `instrument()` set up; `uninstall()` undoes it."""

    def __init__(
        self,
        mode: Mode,
        *,
        metrics: LazyMetrics | None = None,
        reader: SpoolReader | None = None,
        writer: SpoolWriter | None = None,
    ) -> None:
        """Use `instrument()` rather than building one."""
        self.mode: Mode = mode
        """"counting", "spool-writer" (a flow-run process; its parent counts) or "disabled"."""
        self._metrics = metrics
        self.reader = reader
        """Reads the records of child flow-run processes (counting mode with children)."""
        self.writer = writer
        self.probe: ApiProbe | None = None

    @classmethod
    def disabled(cls) -> PrefectInstrumentation:
        """Nothing is counted."""
        return cls("disabled")

    @property
    def enabled(self) -> bool:
        """True when runs are counted here or handed to a parent process."""
        return self.mode != "disabled"

    @property
    def metrics(self) -> EtlMetrics | None:
        """The data agent instruments (counting mode, once built)."""
        return None if self._metrics is None else self._metrics.metrics

    @property
    def telemetry(self) -> AgentTelemetry | None:
        """The telemetry the metrics export through (counting mode, once built)."""
        return None if self._metrics is None else self._metrics.telemetry

    def poll_children(self) -> None:
        """Count what child flow-run processes reported so far (the thread does it each second)."""
        if self.reader is not None:
            self.reader.poll()

    def uninstall(self) -> None:
        """Stop counting: restore Prefect's engines, stop threads, forget the spool."""
        global _current
        engines.uninstall()
        if self.probe is not None:
            self.probe.stop()
        if self.reader is not None:
            self.reader.stop()
            if os.environ.get(SPOOL_ENV) == str(self.reader.directory):
                del os.environ[SPOOL_ENV]
        atexit.unregister(self._at_exit)
        with _lock:
            if _current is self:
                _current = None
        self.mode = "disabled"

    def _at_exit(self) -> None:
        # Registered after the telemetry's own exit hook so that it runs first
        # (atexit is last-in, first-out): the last child records still get exported.
        if self.reader is not None:
            self.reader.stop()


def instrument(
    telemetry: AgentTelemetry | None = None,
    *,
    service_name: str | None = None,
    version: str | None = None,
    children: bool = True,
    probe_interval_s: float | None = 30.0,
) -> PrefectInstrumentation:
    """Count every flow and task run of this process, and of the flow-run processes it starts.

    Covers flows and tasks defined before the call too. `telemetry` defaults to
    `setup_metrics(service_name, "etl", service_version=version, set_global=False)`.
    Name and version default to OTEL_SERVICE_NAME and `service.version` in
    OTEL_RESOURCE_ATTRIBUTES; with neither, the name is the main script's and there is
    no version (no `service_version` on `target_info`), which one log line says.
    With `children`, flow-run processes started by `flow.serve()` or a process worker
    hand their runs to this process (they need the plugin: PREFECT_PLUGINS_ENABLED=true).
    `probe_interval_s` sets how often `agent_connected` checks the Prefect API (None:
    never). Idempotent: later calls return the first result, except that the first
    explicit `telemetry` is adopted if the plugin installed first and nothing ran yet.
    Never raises; a problem leaves Prefect untouched and logs a warning.
    """
    try:
        return _install(telemetry, service_name, version, children, probe_interval_s, lazy=False)
    except Exception:
        _logger.exception("otel_agents: Prefect run metrics disabled: instrument() failed")
        return PrefectInstrumentation.disabled()


def current() -> PrefectInstrumentation | None:
    """The instrumentation of this process, if `instrument()` or the plugin installed one."""
    return _current


def _install(
    telemetry: AgentTelemetry | None,
    service_name: str | None,
    version: str | None,
    children: bool,
    probe_interval_s: float | None,
    *,
    lazy: bool,
) -> PrefectInstrumentation:
    global _current
    if importlib.util.find_spec("prefect") is None:
        _logger.warning(
            "otel_agents: Prefect is not installed (pip install 'otel-agents-pipeline"
            "[prefect]'); flow runs are not counted"
        )
        return PrefectInstrumentation.disabled()
    # Outside the lock: the first `import prefect` runs the plugin, which installs too.
    import prefect  # noqa: F401

    name = agent_name(service_name, version)
    with _lock:
        if _current is not None:
            return _adopt(_current, telemetry, name, lazy)
        _warn_if_untested_version()
        spool = inherited_spool(os.environ)
        if spool is not None:
            handle = _spool_writer(SpoolWriter(spool))
        else:
            handle = _counting(telemetry, name, children, probe_interval_s, lazy)
        if handle.enabled:
            _current = handle
        return handle


def _adopt(
    handle: PrefectInstrumentation,
    telemetry: AgentTelemetry | None,
    name: AgentName,
    lazy: bool,
) -> PrefectInstrumentation:
    """A second call: the plugin's not-yet-built metrics take the caller's telemetry and name."""
    lazy_metrics = handle._metrics
    if lazy_metrics is not None and lazy_metrics.adopt(telemetry, name):
        if not lazy:
            lazy_metrics()
    elif telemetry is not None and telemetry is not handle.telemetry:
        _logger.warning(
            "otel_agents: Prefect runs are already counted (mode %s); the telemetry passed "
            "to this instrument() call is not used",
            handle.mode,
        )
    return handle


def _spool_writer(writer: SpoolWriter) -> PrefectInstrumentation:
    if not _installed(engines.install(RunTracker(writer))):
        return PrefectInstrumentation.disabled()
    run_id = os.environ.get(FLOW_RUN_ID_ENV)
    if run_id:
        writer.run_started(run_id)
    return PrefectInstrumentation("spool-writer", writer=writer)


def _counting(
    telemetry: AgentTelemetry | None,
    name: AgentName,
    children: bool,
    probe_interval_s: float | None,
    lazy: bool,
) -> PrefectInstrumentation:
    flow_run_id = os.environ.get(FLOW_RUN_ID_ENV)
    if flow_run_id:
        _logger.warning(
            "otel_agents: this process executes one flow run for a runner or worker and "
            "exports its own counts, which start new series each run; enable the plugin "
            "(PREFECT_PLUGINS_ENABLED=true) in the runner/worker process instead"
        )

    def on_build(built: AgentTelemetry, metrics: EtlMetrics) -> None:
        if handle.reader is not None:
            atexit.unregister(handle._at_exit)
            atexit.register(handle._at_exit)
        if probe_interval_s is not None:
            handle.probe = ApiProbe(metrics.status.set_connected, probe_interval_s)
            handle.probe.start()

    def flush_after(run_id: str) -> None:
        if run_id == flow_run_id and lazy_metrics.telemetry is not None:
            lazy_metrics.telemetry.force_flush(timeout_s=FLUSH_TIMEOUT_S)

    lazy_metrics = LazyMetrics(name, telemetry, on_build)
    handle = PrefectInstrumentation("counting", metrics=lazy_metrics)
    sink = MetricsSink(lazy_metrics, flush_after if flow_run_id else None)
    if not _installed(engines.install(RunTracker(sink))):
        return PrefectInstrumentation.disabled()
    if children and not flow_run_id:
        directory = new_spool_dir()
        handle.reader = SpoolReader(directory, lazy_metrics, resolve_from_api)
        os.environ[SPOOL_ENV] = str(directory)
        handle.reader.start()
        atexit.register(handle._at_exit)
    if not lazy:
        lazy_metrics()
    return handle


def _installed(missing: list[str]) -> bool:
    if not missing:
        return True
    import prefect

    if all(name.endswith("handle_crash") for name in missing):
        _logger.warning(
            "otel_agents: Prefect %s lacks %s; crashed task runs are not counted",
            prefect.__version__,
            ", ".join(missing),
        )
        return True
    _logger.warning(
        "otel_agents: Prefect %s lacks %s; flow and task runs are NOT counted "
        "(supported: prefect%s)",
        prefect.__version__,
        ", ".join(missing),
        engines.SUPPORTED_PREFECT,
    )
    return False


def _warn_if_untested_version() -> None:
    import prefect

    match = re.match(r"(\d+)\.(\d+)", prefect.__version__)
    if match is None or not ((3, 4) <= (int(match[1]), int(match[2])) < (4, 0)):
        _logger.warning(
            "otel_agents: Prefect %s is outside the tested range prefect%s; counting if its "
            "engines still look as expected",
            prefect.__version__,
            engines.SUPPORTED_PREFECT,
        )


def install_for_plugin(*, eager: bool) -> PrefectInstrumentation:
    """The plugin's installation: default telemetry, built now if `eager`, else at first use."""
    return _install(None, None, None, True, 30.0, lazy=not eager)
