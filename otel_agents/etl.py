"""Data agent metrics: flow runs and task runs, counted once when each run finishes.

Where this sits: data agent code ──(otel_agents: *instruments*)──▶ OTLP/gRPC ──▶ gateway.
Independent of Prefect: `otel_agents.prefect` feeds these from Prefect's engines, and
any other orchestrator can call the same `record_*` methods.

Through the Collector's prometheus exporter (UnderscoreEscapingWithSuffixes):

| instrument | Prometheus | attributes |
|---|---|---|
| `agent.flows_executed` (counter, `{flow}`) | `agent_flows_executed_total` | flow |
| `agent.flows_success` (counter, `{flow}`) | `agent_flows_success_total` | flow |
| `agent.flows_failed` (counter, `{flow}`) | `agent_flows_failed_total` | flow |
| `agent.last_flow_duration` (gauge, `s`) | `agent_last_flow_duration_seconds` | flow |
| `agent.flow.duration` (histogram, `s`) | `agent_flow_duration_seconds_*` | none: all flows |
| `agent.tasks_executed` (counter, `{task}`) | `agent_tasks_executed_total` | none, or flow, task |
| `agent.tasks_failed` (counter, `{task}`) | `agent_tasks_failed_total` | none, or flow, task |
| `agent.task_retries` (counter, `{retry}`) | `agent_task_retries_total` | none, or flow, task |
| `AgentStatus(meter, "agent")` | `agent_uptime_seconds`, `agent_connected` | |

Series are what an agent costs downstream (the Collector keeps each one, Prometheus
stores each one), so they are budgeted: per flow name 4 series, whatever the runs'
states; the histogram is one per agent with 10 boundaries (13 series); task counters
are per agent (3 series) unless `task_detail` (OTEL_AGENTS_TASK_DETAIL=true) asks for
3 per task name in each flow. With `target_info` and the gateway's 2 last-seen series,
a data agent with F flow names makes 4F + 21 series, or 4F + 3P + 18 with task detail
(P = distinct (flow, task) pairs): 101 for 20 flows of 5 tasks, 398 with task detail.
docs/agents.md ("Series per agent") has the breakdown.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from opentelemetry.metrics import CallbackOptions, Counter, Meter, Observation

from otel_agents import names
from otel_agents.forks import reset_in_children
from otel_agents.status import AgentStatus
from otel_agents.telemetry import AgentTelemetry

_logger = logging.getLogger(__name__)


STATES = ("completed", "failed", "crashed", "cancelled")
"""The final state types of a run, as `record_*` take them. Not an attribute: a cancelled
run is executed minus succeeded minus failed."""
_FAILED = frozenset(("failed", "crashed"))

FLOW_DURATION_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0)
"""Histogram boundaries in seconds, 1 s to 6 h: 10 boundaries, 13 series per agent
(with +Inf, _sum and _count). Each flow's own duration is `agent.last_flow_duration`."""


class EtlMetrics:
    """The instruments of a data agent; call `record_*` once per finished run.

    Thread-safe. Attributes carry flow and task names only, never run ids, run names,
    parameters or tags (each would start new series per run). The gateway adds
    `tenant_id`. `task_detail` labels the task counters by `flow` and `task` (3 series
    per task of each flow); without it they count the whole agent (3 series).
    `version` is accepted for existing callers and not reported: the agent's version
    is the resource's `service.version` (`setup_metrics(service_version=)`).
    """

    def __init__(
        self, meter: Meter, version: str | None = None, *, task_detail: bool = False
    ) -> None:
        """Create the instruments on `meter` (usually `AgentTelemetry.meter`)."""
        self.status = AgentStatus(meter, "agent")
        """Uptime and connection state gauges (`agent_*`)."""
        self.task_detail = task_detail
        """True when task counters are labelled by flow and task."""
        self._flows = _counter(
            meter, names.AGENT_FLOWS_EXECUTED, "Flow runs that reached a final state."
        )
        self._flows_success = _counter(
            meter, names.AGENT_FLOWS_SUCCESS, "Flow runs that completed."
        )
        self._flows_failed = _counter(
            meter, names.AGENT_FLOWS_FAILED, "Flow runs that failed or crashed."
        )
        self._tasks = _counter(
            meter, names.AGENT_TASKS_EXECUTED, "Task runs that reached a final state."
        )
        self._tasks_failed = _counter(
            meter, names.AGENT_TASKS_FAILED, "Task runs that failed or crashed."
        )
        self._retries = _counter(meter, names.AGENT_TASK_RETRIES, "Task run retries.")
        self._duration = meter.create_histogram(
            names.AGENT_FLOW_DURATION.name,
            unit=names.AGENT_FLOW_DURATION.unit,
            description="Duration of finished flow runs, all flows of the agent.",
            explicit_bucket_boundaries_advisory=FLOW_DURATION_BUCKETS,
        )
        meter.create_observable_gauge(
            names.AGENT_LAST_FLOW_DURATION.name,
            callbacks=[self._observe_last_duration],
            unit=names.AGENT_LAST_FLOW_DURATION.unit,
            description="Duration of each flow's last finished run.",
        )
        self._lock = threading.Lock()
        self._last_duration: dict[str, float] = {}
        self._seen_flows: set[str] = set()
        self._seen_tasks: set[tuple[str, str | None]] = set()
        self._warned_states: set[str] = set()
        reset_in_children(self)

    def after_fork_in_child(self) -> None:
        """A forked child counts from zero: its flows start at 0 again (otel_agents.forks)."""
        self._lock = threading.Lock()
        self._last_duration = {}
        self._seen_flows = set()
        self._seen_tasks = set()

    def flow_started(self, flow_name: str) -> None:
        """Note that `flow_name` runs: its counters start at 0 the first time.

        Without a 0, Prometheus' `increase()` misses the first count of a new series
        (dashboards use it over their time range).
        """
        with self._lock:
            if flow_name in self._seen_flows:
                return
            self._seen_flows.add(flow_name)
        attributes = {"flow": flow_name}
        self._flows.add(0, attributes)
        self._flows_success.add(0, attributes)
        self._flows_failed.add(0, attributes)

    def record_flow_finished(self, flow_name: str, state: str, duration_s: float | None) -> None:
        """Count one flow run that reached `state` (one of `STATES`) after `duration_s`."""
        if not self._known(state):
            return
        self.flow_started(flow_name)
        attributes = {"flow": flow_name}
        self._flows.add(1, attributes)
        if state == "completed":
            self._flows_success.add(1, attributes)
        elif state in _FAILED:
            self._flows_failed.add(1, attributes)
        if duration_s is not None and duration_s >= 0:
            self._duration.record(duration_s)
            with self._lock:
                self._last_duration[flow_name] = duration_s

    def task_started(self, task_name: str, flow_name: str | None = None) -> None:
        """Note that `task_name` runs (in `flow_name`): its counters start at 0."""
        attributes = self._task_attributes(task_name, flow_name)
        key = (attributes.get("task", ""), attributes.get("flow"))
        with self._lock:
            if key in self._seen_tasks:
                return
            self._seen_tasks.add(key)
        self._tasks.add(0, attributes)
        self._tasks_failed.add(0, attributes)
        self._retries.add(0, attributes)

    def record_task_finished(
        self, task_name: str, state: str, *, flow_name: str | None = None, retries: int = 0
    ) -> None:
        """Count one task run that reached `state` after `retries` retries.

        `flow_name` is the flow the task ran in; None for a task called outside a flow.
        """
        if not self._known(state):
            return
        self.task_started(task_name, flow_name)
        attributes = self._task_attributes(task_name, flow_name)
        self._tasks.add(1, attributes)
        if state in _FAILED:
            self._tasks_failed.add(1, attributes)
        if retries > 0:
            self._retries.add(retries, attributes)

    def _task_attributes(self, task_name: str, flow_name: str | None) -> dict[str, str]:
        if not self.task_detail:
            return {}
        if flow_name is None:
            return {"task": task_name}
        return {"task": task_name, "flow": flow_name}

    def _known(self, state: str) -> bool:
        if state in STATES:
            return True
        if state not in self._warned_states:
            self._warned_states.add(state)
            _logger.warning(
                "otel_agents: run state %r is not one of %s; not counted", state, STATES
            )
        return False

    def _observe_last_duration(self, options: CallbackOptions) -> Iterable[Observation]:
        # No lock: dict.copy() is one atomic step, and a collection must never wait for a
        # lock a host thread holds (see ConnectorMetrics._observe_errors).
        last = self._last_duration.copy().items()
        return [Observation(seconds, {"flow": flow}) for flow, seconds in last]


def etl_metrics(telemetry: AgentTelemetry, version: str | None = None) -> EtlMetrics:
    """The data agent instruments of `telemetry` (no-ops when metrics are disabled), with
    its settings (OTEL_AGENTS_TASK_DETAIL)."""
    return EtlMetrics(telemetry.meter, version=version, task_detail=telemetry.config.task_detail)


def _counter(meter: Meter, metric: names.ContractMetric, description: str) -> Counter:
    return meter.create_counter(metric.name, unit=metric.unit, description=description)
