"""Turns the state changes Prefect's engines report into one record per finished run.

Where this sits: Prefect engine ──(*tracker*)──▶ sink (EtlMetrics, or the spool read by
the runner/worker process) ──▶ OTLP/gRPC ──▶ gateway.

Engines report every state a run enters, some of them twice (a task's final state is
dispatched from both its success path and the engine's `finally`), and a task's crash
arrives through another path than its hooks. The tracker keeps exactly one final record
per run id, counts retries from the run count, and times flow runs from their first
Running state. It knows nothing of Prefect's classes: the caller passes plain values.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol, TypeVar

FINAL_STATES = {
    "COMPLETED": "completed",
    "FAILED": "failed",
    "CRASHED": "crashed",
    "CANCELLED": "cancelled",
}
"""Prefect's final state types and the `state` attribute value each becomes."""

RUNNING = "RUNNING"

# Run ids remembered to drop duplicate final states. A duplicate arrives within the
# same run's teardown, so a few thousand recent ids are far more than needed.
_REMEMBERED_RUNS = 4096

_V = TypeVar("_V")


class RunSink(Protocol):
    """Where finished runs go: EtlMetrics in this process, or the parent's spool."""

    def flow_started(self, flow_name: str) -> None:
        """A flow of this name runs (first time in this process)."""

    def flow_finished(
        self, run_id: str, flow_name: str, state: str, duration_s: float | None
    ) -> None:
        """A flow run reached a final state."""

    def task_started(self, task_name: str, flow_name: str | None) -> None:
        """A task of this name runs in this flow (first time in this process)."""

    def task_finished(
        self, task_name: str, flow_name: str | None, state: str, retries: int
    ) -> None:
        """A task run reached a final state after `retries` retries."""


class RunTracker:
    """One final record per flow or task run; thread-safe."""

    def __init__(self, sink: RunSink, clock: Callable[[], float] = time.monotonic) -> None:
        """Send records to `sink`; `clock` times flow runs (monotonic seconds)."""
        self.sink = sink
        self._clock = clock
        self._lock = threading.Lock()
        self._flow_started_at: OrderedDict[str, float] = OrderedDict()
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._seen_flows: set[str] = set()
        self._seen_tasks: set[tuple[str, str | None]] = set()

    def flow_state(self, run_id: str, flow_name: str, state_type: str) -> None:
        """A flow run entered a state of `state_type` (e.g. "RUNNING", "FAILED")."""
        if state_type == RUNNING:
            with self._lock:
                self._flow_started_at.setdefault(run_id, self._clock())
                _trim(self._flow_started_at)
                first = flow_name not in self._seen_flows
                self._seen_flows.add(flow_name)
            if first:
                self.sink.flow_started(flow_name)
            return
        state = FINAL_STATES.get(state_type)
        if state is None or not self._first_final(run_id):
            return
        with self._lock:
            started = self._flow_started_at.pop(run_id, None)
        duration = None if started is None else max(self._clock() - started, 0.0)
        self.sink.flow_finished(run_id, flow_name, state, duration)

    def task_state(
        self,
        run_id: str,
        task_name: str,
        flow_name: str | None,
        state_type: str,
        run_count: int,
    ) -> None:
        """A task run entered a state; `run_count` is its number of attempts so far."""
        if state_type == RUNNING:
            key = (task_name, flow_name)
            with self._lock:
                first = key not in self._seen_tasks
                self._seen_tasks.add(key)
            if first:
                self.sink.task_started(task_name, flow_name)
            return
        state = FINAL_STATES.get(state_type)
        if state is None or not self._first_final(run_id):
            return
        # A cached result finishes with run_count 1, a task that never started with 0.
        self.sink.task_finished(task_name, flow_name, state, max(run_count - 1, 0))

    def _first_final(self, run_id: str) -> bool:
        with self._lock:
            if run_id in self._finished:
                return False
            self._finished[run_id] = None
            _trim(self._finished)
            return True


def _trim(runs: OrderedDict[str, _V]) -> None:
    while len(runs) > _REMEMBERED_RUNS:
        runs.popitem(last=False)
