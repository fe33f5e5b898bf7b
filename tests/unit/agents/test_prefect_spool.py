"""Tracker, spool writer and reader, without Prefect: exactly one count per run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from test_prefect_support import key, nonzero, points

from otel_agents import setup_metrics
from otel_agents.etl import EtlMetrics
from otel_agents.prefect.children import FinalRun, SpoolReader
from otel_agents.prefect.spool import (
    SPOOL_ENV,
    SpoolWriter,
    inherited_spool,
    new_spool_dir,
    spool_owner,
)
from otel_agents.prefect.tracker import RunTracker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def etl() -> Iterator[tuple[EtlMetrics, InMemoryMetricReader]]:
    reader = InMemoryMetricReader()
    telemetry = setup_metrics("data-agent", "etl", environ={}, reader=reader, set_global=False)
    # Task detail on: the task and flow names must survive the trip through the spool.
    yield EtlMetrics(telemetry.meter, task_detail=True), reader
    telemetry.shutdown()


def test_tracker_counts_a_final_state_once_and_times_from_first_running(tmp_path: Path) -> None:
    clock = Clock()
    records: list[tuple[object, ...]] = []

    class Sink:
        def flow_started(self, flow_name: str) -> None:
            records.append(("fs", flow_name))

        def flow_finished(self, run_id: str, flow: str, state: str, d: float | None) -> None:
            records.append(("ff", run_id, flow, state, d))

        def task_started(self, task_name: str, flow_name: str | None) -> None:
            records.append(("ts", task_name, flow_name))

        def task_finished(self, task: str, flow: str | None, state: str, retries: int) -> None:
            records.append(("tf", task, flow, state, retries))

    tracker = RunTracker(Sink(), clock=clock)
    tracker.flow_state("r1", "nightly", "PENDING")
    tracker.flow_state("r1", "nightly", "RUNNING")
    clock.now += 5
    tracker.flow_state("r1", "nightly", "SCHEDULED")  # AwaitingRetry
    tracker.flow_state("r1", "nightly", "RUNNING")  # Retrying: the clock keeps running
    clock.now += 2
    tracker.flow_state("r1", "nightly", "FAILED")
    tracker.flow_state("r1", "nightly", "FAILED")  # dispatched twice: counted once
    for attempt in (1, 2, 3):
        tracker.task_state("t1", "load", "nightly", "RUNNING", attempt)
    tracker.task_state("t1", "load", "nightly", "COMPLETED", 3)
    tracker.task_state("t1", "load", "nightly", "COMPLETED", 3)
    tracker.task_state("t2", "load", "nightly", "PENDING", 0)  # NotReady: never ran
    tracker.flow_state("r2", "nightly", "CRASHED")  # crashed before running: no duration
    assert records == [
        ("fs", "nightly"),
        ("ff", "r1", "nightly", "failed", 7.0),
        ("ts", "load", "nightly"),
        ("tf", "load", "nightly", "completed", 2),
        ("ff", "r2", "nightly", "crashed", None),
    ]


def test_spool_round_trip_counts_children_exactly(
    tmp_path: Path, etl: tuple[EtlMetrics, InMemoryMetricReader]
) -> None:
    metrics, reader = etl
    directory = tmp_path / "spool"
    script = f"""
import sys
sys.path.insert(0, {str(Path.cwd())!r})
from pathlib import Path
from otel_agents.prefect.spool import SpoolWriter
w = SpoolWriter(Path({str(directory)!r}))
w.run_started("run-a")
w.flow_started("nightly")
w.task_started("load", "nightly")
w.task_finished("load", "nightly", "completed", 1)
w.flow_finished("run-a", "nightly", "completed", 4.5)
"""
    for _ in range(3):  # three flow-run processes, one after the other
        subprocess.run([sys.executable, "-c", script], check=True)
    resolved: list[str] = []

    def resolver(run_id: str) -> FinalRun | None:
        resolved.append(run_id)
        return None

    spool = SpoolReader(directory, lambda: metrics, resolver)
    spool.poll()
    spool.poll()
    # Three processes reported the same run id: one final state (a resumed run).
    assert nonzero(points(reader, "agent.flows_executed")) == {key(flow="nightly"): 1}
    assert nonzero(points(reader, "agent.flows_success")) == {key(flow="nightly"): 1}
    assert nonzero(points(reader, "agent.tasks_executed")) == {key(task="load", flow="nightly"): 3}
    assert nonzero(points(reader, "agent.task_retries")) == {key(task="load", flow="nightly"): 3}
    assert resolved == []  # every run finished in its process: no API call
    assert list(directory.iterdir()) == []  # files of ended processes are removed


def test_a_killed_child_is_settled_from_the_api(
    tmp_path: Path, etl: tuple[EtlMetrics, InMemoryMetricReader]
) -> None:
    metrics, reader = etl
    directory = tmp_path / "spool"
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(Path.cwd())!r})
from pathlib import Path
from otel_agents.prefect.spool import SpoolWriter
w = SpoolWriter(Path({str(directory)!r}))
w.run_started("run-k")
w.task_finished("extract", "nightly", "completed", 0)
open(next(Path({str(directory)!r}).glob("*.jsonl")), "ab").write(b'{{"k":"tf","t":"half')
os.kill(os.getpid(), signal.SIGKILL)
"""
    subprocess.run([sys.executable, "-c", script], check=False)
    clock = Clock()
    answers: list[FinalRun | None] = [None, FinalRun("nightly", "crashed", 3.0)]
    asked: list[str] = []

    def resolver(run_id: str) -> FinalRun | None:
        asked.append(run_id)
        return answers.pop(0)

    spool = SpoolReader(directory, lambda: metrics, resolver, clock=clock)
    spool.poll()  # not final yet (the runner has not marked it)
    spool.poll()  # too soon to ask again
    clock.now += 3
    spool.poll()
    clock.now += 3
    spool.poll()  # nothing left to ask
    assert asked == ["run-k", "run-k"]
    assert nonzero(points(reader, "agent.flows_executed")) == {key(flow="nightly"): 1}
    assert nonzero(points(reader, "agent.flows_failed")) == {key(flow="nightly"): 1}  # crashed
    # The task finished before the kill was counted; the torn last line was not.
    assert nonzero(points(reader, "agent.tasks_executed")) == {
        key(task="extract", flow="nightly"): 1
    }


def test_a_run_that_never_becomes_final_is_given_up(
    tmp_path: Path, etl: tuple[EtlMetrics, InMemoryMetricReader]
) -> None:
    metrics, reader = etl
    directory = tmp_path / "spool"
    directory.mkdir()
    (directory / "999999999-dead.jsonl").write_text('{"k":"run","id":"paused"}\n')
    clock = Clock()
    spool = SpoolReader(directory, lambda: metrics, lambda run: None, clock=clock, settle_s=10)
    spool.poll()
    clock.now += 11
    spool.poll()
    assert spool._pending == {}
    assert points(reader, "agent.flows_executed") == {}


def test_api_errors_are_retried_not_raised(
    tmp_path: Path, etl: tuple[EtlMetrics, InMemoryMetricReader]
) -> None:
    metrics, _ = etl
    directory = tmp_path / "spool"
    directory.mkdir()
    (directory / "999999999-dead.jsonl").write_text('{"k":"run","id":"r"}\nnot json\n')

    def unreachable(run_id: str) -> FinalRun | None:
        raise ConnectionError("server down")

    spool = SpoolReader(directory, lambda: metrics, unreachable)
    spool.poll()
    assert "r" in spool._pending


def test_spool_ownership_is_decided_by_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    mine = new_spool_dir()
    assert spool_owner(str(mine)) == os.getpid()
    assert inherited_spool({SPOOL_ENV: str(mine)}) is None  # the reader itself
    parent = mine.with_name(f"otel-agents-prefect-{os.getpid() + 1}-abc123")
    assert inherited_spool({SPOOL_ENV: str(parent)}) == parent
    assert inherited_spool({SPOOL_ENV: "/tmp/elsewhere"}) is None
    assert inherited_spool({}) is None


def test_writer_that_cannot_write_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    writer = SpoolWriter(blocker / "spool")  # a directory under a file: cannot exist
    writer.flow_started("a")
    writer.flow_started("b")
    assert len([r for r in caplog.records if "cannot write" in r.getMessage()]) == 1
