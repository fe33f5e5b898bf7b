"""Counts, in the runner or worker, the flow runs its child processes executed.

Where this sits: flow-run processes ──spool──▶ (*children*: runner/worker) ──▶ EtlMetrics.

Reads the spool files written by `SpoolWriter` and replays each record into this
process's `EtlMetrics`. A flow-run process that dies before its flow run reaches a final
state (killed, out of memory, cancelled by the runner) cannot say how it ended; the
runner or the server records that state (Crashed, Cancelled) in the Prefect API. So for
every flow run a child announced but never finished, the reader asks the API for its
final state once all processes of that run are gone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from otel_agents.etl import EtlMetrics
from otel_agents.prefect.spool import pid_alive, writer_pid
from otel_agents.prefect.tracker import FINAL_STATES
from otel_agents.signals import signals_blocked

_logger = logging.getLogger(__name__)

# After its last process is gone, a run's final state is set by the runner within
# seconds; a run still not final after this long (e.g. paused) is left to the process
# that resumes it.
SETTLE_S = 120.0
_RETRY_S = 2.0
_REMEMBERED_RUNS = 4096


@dataclass(frozen=True)
class FinalRun:
    """How a flow run ended, as the Prefect API reports it."""

    flow_name: str
    state: str
    duration_s: float | None


Resolver = Callable[[str], FinalRun | None]
"""Looks up a flow run by id: its final state, or None while it has none."""


@dataclass
class _Pending:
    pids: set[int] = field(default_factory=set)
    gone_since: float | None = None
    next_try: float = 0.0


@dataclass
class _File:
    pid: int | None
    offset: int = 0
    partial: bytes = b""


class SpoolReader:
    """Replays the spool into `EtlMetrics`; `poll()` once, or `start()` a thread."""

    def __init__(
        self,
        directory: Path,
        metrics: Callable[[], EtlMetrics | None],
        resolver: Resolver,
        clock: Callable[[], float] = time.monotonic,
        settle_s: float = SETTLE_S,
    ) -> None:
        """Read `directory`; `metrics` returns the instruments (created on first need)."""
        self.directory = directory
        self._metrics = metrics
        self._resolver = resolver
        self._clock = clock
        self._settle_s = settle_s
        self._lock = threading.Lock()
        self._files: dict[str, _File] = {}
        self._pending: dict[str, _Pending] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, interval_s: float = 1.0) -> None:
        """Poll every `interval_s` in a daemon thread."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._loop, args=(interval_s,), name="otel-agents-prefect-spool", daemon=True
        )
        with signals_blocked():  # the host's signals stay with its main thread
            self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the thread, read what is left, and remove the directory if it is empty."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.poll()
        # Absent, or a child still writes: then it stays.
        with contextlib.suppress(OSError):
            self.directory.rmdir()

    def poll(self) -> None:
        """Read new records of every spool file and settle runs whose processes are gone."""
        with self._lock:
            try:
                if self.directory.is_dir():
                    for path in sorted(self.directory.glob("*.jsonl")):
                        self._read(path)
                self._settle()
            except Exception:
                _logger.warning("otel_agents: reading flow-run records failed", exc_info=True)

    def _loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.poll()

    def _read(self, path: Path) -> None:
        state = self._files.setdefault(path.name, _File(writer_pid(path)))
        # Liveness first: if the writer is gone now, the read below sees its last line.
        alive = state.pid is not None and pid_alive(state.pid)
        with path.open("rb") as spool:
            spool.seek(state.offset)
            data = spool.read()
        state.offset += len(data)
        lines = (state.partial + data).split(b"\n")
        state.partial = lines.pop()
        for line in lines:
            if line:
                self._apply(line, state.pid)
        if not alive:
            path.unlink(missing_ok=True)
            del self._files[path.name]

    def _apply(self, line: bytes, pid: int | None) -> None:
        try:
            record: dict[str, Any] = json.loads(line)
            kind = record["k"]
        except (ValueError, KeyError, TypeError):
            _logger.warning("otel_agents: skipped a malformed flow-run record")
            return
        if kind == "run":
            pending = self._pending.setdefault(str(record["id"]), _Pending())
            if pid is not None:
                pending.pids.add(pid)
            return
        if kind == "ff":
            self._pending.pop(str(record["id"]), None)
        metrics = self._metrics()
        if metrics is None:
            return
        if kind == "fs":
            metrics.flow_started(str(record["f"]))
        elif kind == "ff":
            self._flow_finished(metrics, str(record["id"]), str(record["f"]), record)
        elif kind == "ts":
            metrics.task_started(str(record["t"]), _optional(record.get("f")))
        elif kind == "tf":
            metrics.record_task_finished(
                str(record["t"]),
                str(record["s"]),
                flow_name=_optional(record.get("f")),
                retries=int(record.get("r") or 0),
            )

    def _flow_finished(
        self, metrics: EtlMetrics, run_id: str, flow_name: str, record: dict[str, Any]
    ) -> None:
        if not self._first_final(run_id):
            return
        duration = record.get("d")
        metrics.record_flow_finished(
            flow_name, str(record["s"]), None if duration is None else float(duration)
        )

    def _settle(self) -> None:
        now = self._clock()
        for run_id, pending in list(self._pending.items()):
            if any(pid_alive(pid) for pid in pending.pids):
                pending.gone_since = None
                continue
            if pending.gone_since is None:
                pending.gone_since = now
            if now < pending.next_try:
                continue
            pending.next_try = now + _RETRY_S
            final = self._resolve(run_id)
            if final is not None:
                del self._pending[run_id]
                metrics = self._metrics()
                if metrics is not None and self._first_final(run_id):
                    metrics.record_flow_finished(final.flow_name, final.state, final.duration_s)
            elif now - pending.gone_since > self._settle_s:
                del self._pending[run_id]
                _logger.warning(
                    "otel_agents: flow run %s has no final state %.0f s after its process "
                    "ended; not counted here (a resumed run is counted where it finishes)",
                    run_id,
                    self._settle_s,
                )

    def _resolve(self, run_id: str) -> FinalRun | None:
        try:
            return self._resolver(run_id)
        except Exception as exc:
            _logger.info("otel_agents: cannot read flow run %s yet (%s)", run_id, exc)
            return None

    def _first_final(self, run_id: str) -> bool:
        if run_id in self._finished:
            return False
        self._finished[run_id] = None
        while len(self._finished) > _REMEMBERED_RUNS:
            self._finished.popitem(last=False)
        return True


def _optional(value: object) -> str | None:
    return None if value is None else str(value)


def resolve_from_api(run_id: str) -> FinalRun | None:
    """The final state of flow run `run_id` read from the Prefect API (None if not final)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(run_id))
        state_type = getattr(run.state_type, "value", None)
        state = FINAL_STATES.get(str(state_type))
        if state is None:
            return None
        flow = client.read_flow(run.flow_id)
        duration = None
        if run.start_time is not None and run.end_time is not None:
            duration = max((run.end_time - run.start_time).total_seconds(), 0.0)
        return FinalRun(str(flow.name), state, duration)
