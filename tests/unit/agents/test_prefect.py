"""instrument(): real Prefect flows run in this process, counted exactly.

One real `prefect server` serves the whole module (the ephemeral server is slow and
flaky); each test gets fresh telemetry with an InMemoryMetricReader.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_series import collected_series, data_agent_formula
from test_prefect_support import (
    histogram_counts,
    key,
    nonzero,
    points,
)

from otel_agents import setup_metrics
from otel_agents.prefect import PrefectInstrumentation, instrument

prefect = pytest.importorskip("prefect")

from prefect import flow, task  # noqa: E402
from prefect.states import Cancelled  # noqa: E402

FLOWS = "agent.flows_executed"
SUCCESS = "agent.flows_success"
FAILED = "agent.flows_failed"
TASKS = "agent.tasks_executed"
TASKS_FAILED = "agent.tasks_failed"
RETRIES = "agent.task_retries"


class Boom(BaseException):
    """Not an Exception: Prefect treats it as a crash."""


# Defined before any instrument() call, on purpose: they must be counted too.
@task
def extract(n: int) -> list[int]:
    return list(range(n))


@task
def double(x: int) -> int:
    return 2 * x


@task(retries=2, retry_delay_seconds=0)
def always_fails() -> None:
    raise RuntimeError("source unavailable")


_attempts: dict[str, int] = {}


@task(retries=3, retry_delay_seconds=0)
def flaky(name: str) -> str:
    _attempts[name] = _attempts.get(name, 0) + 1
    if _attempts[name] < 3:
        raise RuntimeError("transient")
    return name


@flow
def etl(n: int = 3) -> int:
    return sum(double(x) for x in extract(n))


Counted = tuple[PrefectInstrumentation, InMemoryMetricReader]


@contextmanager
def counting(environ: dict[str, str]) -> Iterator[Counted]:
    """instrument() with fresh telemetry built from `environ`, undone at the end."""
    reader = InMemoryMetricReader()
    telemetry = setup_metrics(
        "data-agent",
        "etl",
        environ=environ,
        reader=reader,
        service_version="9.9.9",
        set_global=False,
    )
    handle = instrument(telemetry, version="9.9.9", children=False, probe_interval_s=None)
    assert handle.mode == "counting"
    try:
        yield handle, reader
    finally:
        handle.uninstall()
        telemetry.shutdown()


@pytest.fixture
def counted(prefect_api: str) -> Iterator[Counted]:
    """Task detail on (OTEL_AGENTS_TASK_DETAIL=true), to see which task ran in which flow."""
    with counting({"OTEL_AGENTS_TASK_DETAIL": "true"}) as handle_and_reader:
        yield handle_and_reader


def test_completed_flow_counts_the_flow_and_each_task(counted: Any) -> None:
    _, reader = counted
    assert etl(3) == 6
    assert nonzero(points(reader, FLOWS)) == {key(flow="etl"): 1}
    assert nonzero(points(reader, SUCCESS)) == {key(flow="etl"): 1}
    assert nonzero(points(reader, FAILED)) == {}
    assert nonzero(points(reader, TASKS)) == {
        key(task="extract", flow="etl"): 1,
        key(task="double", flow="etl"): 3,
    }
    assert histogram_counts(reader, "agent.flow.duration") == {key(): 1}
    [last] = points(reader, "agent.last_flow_duration").items()
    assert last[0] == key(flow="etl")
    assert 0 < last[1] < 30
    # Series start at 0 when a flow is first seen, so increase() sees the first failure.
    assert points(reader, FAILED) == {key(flow="etl"): 0}


def _pipeline(number: int, tasks: int) -> Any:
    """A flow named pipeline-<number> running `tasks` tasks, failing when asked."""

    def step() -> int:
        return 1

    steps = [task(name=f"step-{t}")(step) for t in range(tasks)]

    @flow(name=f"pipeline-{number}")
    def pipeline(fail: bool = False) -> int:
        done = sum(run() for run in steps)
        if fail:
            raise ValueError("bad input")
        return done

    return pipeline


@pytest.mark.parametrize(("flows", "tasks_per_flow", "detail"), [(3, 2, False), (2, 2, True)])
def test_real_flows_make_the_budgeted_series(
    prefect_api: str, flows: int, tasks_per_flow: int, detail: bool
) -> None:
    environ = {"OTEL_AGENTS_TASK_DETAIL": "true"} if detail else {}
    with counting(environ) as (handle, reader):
        assert handle.metrics is not None
        handle.metrics.status.set_connected(True)
        for number in range(flows):
            pipeline = _pipeline(number, tasks_per_flow)
            assert pipeline() == tasks_per_flow
            assert pipeline(fail=True, return_state=True).is_failed()
        series = collected_series(reader)
        expected = data_agent_formula(flows, tasks_per_flow, task_detail=detail)
        assert len(series) == expected, sorted(series)
        assert nonzero(points(reader, FAILED)) == {
            key(flow=f"pipeline-{n}"): 1 for n in range(flows)
        }


def test_failed_flow(counted: Any) -> None:
    _, reader = counted

    @flow
    def broken() -> None:
        extract(1)
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        broken()
    assert nonzero(points(reader, FLOWS)) == {key(flow="broken"): 1}
    assert nonzero(points(reader, FAILED)) == {key(flow="broken"): 1}
    assert nonzero(points(reader, SUCCESS)) == {}
    assert nonzero(points(reader, TASKS)) == {key(task="extract", flow="broken"): 1}


def test_task_failing_after_its_retries_counts_once_with_its_retries(counted: Any) -> None:
    _, reader = counted

    @flow
    def fragile() -> None:
        always_fails()

    assert fragile(return_state=True).is_failed()
    assert nonzero(points(reader, TASKS)) == {key(task="always_fails", flow="fragile"): 1}
    assert nonzero(points(reader, TASKS_FAILED)) == {key(task="always_fails", flow="fragile"): 1}
    assert nonzero(points(reader, RETRIES)) == {key(task="always_fails", flow="fragile"): 2}
    assert nonzero(points(reader, FAILED)) == {key(flow="fragile"): 1}


def test_task_succeeding_on_a_retry_counts_once(counted: Any) -> None:
    _, reader = counted

    @flow
    def patient() -> str:
        return flaky("patient")

    assert patient() == "patient"
    assert nonzero(points(reader, TASKS)) == {key(task="flaky", flow="patient"): 1}
    assert nonzero(points(reader, RETRIES)) == {key(task="flaky", flow="patient"): 2}
    assert nonzero(points(reader, TASKS_FAILED)) == {}


def test_crashed_flow_and_crashed_task(counted: Any) -> None:
    _, reader = counted

    @task
    def explode() -> None:
        raise Boom()

    @flow
    def doomed() -> None:
        explode()

    with pytest.raises(Boom):
        doomed()
    assert nonzero(points(reader, FLOWS)) == {key(flow="doomed"): 1}
    assert nonzero(points(reader, FAILED)) == {key(flow="doomed"): 1}
    assert nonzero(points(reader, TASKS)) == {key(task="explode", flow="doomed"): 1}
    assert nonzero(points(reader, TASKS_FAILED)) == {key(task="explode", flow="doomed"): 1}


def test_timeouts_are_failures(counted: Any) -> None:
    _, reader = counted

    @task(timeout_seconds=0.2)
    def stuck() -> None:
        time.sleep(1)

    @flow
    def waits_for_stuck() -> None:
        stuck()

    @flow(timeout_seconds=0.2)
    def too_slow() -> None:
        time.sleep(1)

    assert waits_for_stuck(return_state=True).is_failed()
    assert too_slow(return_state=True).is_failed()
    timed_out = {key(flow="waits-for-stuck"): 1, key(flow="too-slow"): 1}
    assert nonzero(points(reader, FLOWS)) == timed_out
    assert nonzero(points(reader, FAILED)) == timed_out
    assert nonzero(points(reader, TASKS)) == {key(task="stuck", flow="waits-for-stuck"): 1}


def test_cancelled_flow_is_neither_success_nor_failure(counted: Any) -> None:
    _, reader = counted

    @flow
    def called_off() -> Any:
        return Cancelled(message="nothing to do today")

    state: Any = called_off(return_state=True)
    assert state.is_cancelled()
    assert nonzero(points(reader, FLOWS)) == {key(flow="called-off"): 1}
    assert nonzero(points(reader, SUCCESS)) == {}
    assert nonzero(points(reader, FAILED)) == {}


def test_subflows_are_flow_runs_of_their_own(counted: Any) -> None:
    _, reader = counted

    @flow
    def child(n: int) -> int:
        return len(extract(n))

    @flow
    def parent() -> int:
        return child(1) + child(2)

    assert parent() == 3
    assert nonzero(points(reader, FLOWS)) == {
        key(flow="parent"): 1,
        key(flow="child"): 2,
    }
    # A task is labelled with the flow it ran in: the subflow.
    assert nonzero(points(reader, TASKS)) == {key(task="extract", flow="child"): 2}


def test_async_flow_with_concurrent_async_tasks(counted: Any) -> None:
    _, reader = counted

    @task
    async def fetch(x: int) -> int:
        await asyncio.sleep(0.01)
        return x

    @flow
    async def gather(n: int) -> int:
        return sum(await asyncio.gather(*(fetch(x) for x in range(n))))

    assert asyncio.run(gather(4)) == 6
    assert nonzero(points(reader, FLOWS)) == {key(flow="gather"): 1}
    assert nonzero(points(reader, TASKS)) == {key(task="fetch", flow="gather"): 4}


def test_submit_and_map(counted: Any) -> None:
    _, reader = counted

    @flow
    def fan_out() -> int:
        futures = double.map(range(5))
        one = double.submit(10)
        return sum(f.result() for f in futures) + one.result()

    assert fan_out() == 40
    assert nonzero(points(reader, TASKS)) == {key(task="double", flow="fan-out"): 6}


def test_task_called_outside_a_flow_has_no_flow_label(counted: Any) -> None:
    _, reader = counted
    assert double(4) == 8
    assert nonzero(points(reader, TASKS)) == {key(task="double"): 1}
    assert points(reader, FLOWS) == {}


def test_cache_hit_is_a_finished_task_run(counted: Any) -> None:
    _, reader = counted

    @task(cache_key_fn=lambda context, parameters: f"square-{parameters['x']}")
    def square(x: int) -> int:
        return x * x

    @flow
    def twice() -> int:
        return square(3) + square(3)

    assert twice() == 18
    assert nonzero(points(reader, TASKS)) == {key(task="square", flow="twice"): 2}
    assert nonzero(points(reader, RETRIES)) == {}


def test_instrument_is_idempotent_and_keeps_user_hooks(counted: Any) -> None:
    handle, reader = counted
    assert instrument() is handle
    seen: list[str] = []

    @flow(on_completion=[lambda f, run, state: seen.append(state.name)])
    def hooked() -> None:
        pass

    hooked()
    hooked()
    assert seen == ["Completed", "Completed"]
    assert nonzero(points(reader, FLOWS)) == {key(flow="hooked"): 2}


def test_a_metrics_failure_never_breaks_the_flow(
    counted: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    handle, _ = counted

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("exporter on fire")

    monkeypatch.setattr(handle.metrics, "record_flow_finished", broken)
    monkeypatch.setattr(handle.metrics, "record_task_finished", broken)
    caplog.set_level(logging.WARNING, logger="otel_agents")
    assert etl(2) == 2
    assert etl(2) == 2
    warnings = [r for r in caplog.records if "could not count" in r.getMessage()]
    assert len(warnings) <= 2  # at most once per kind (flow, task), not per run


def test_uninstall_restores_prefect(counted: Any) -> None:
    from prefect.flow_engine import FlowRunEngine
    from prefect.task_engine import SyncTaskRunEngine

    handle, reader = counted
    handle.uninstall()
    assert not hasattr(FlowRunEngine.call_hooks, "__otel_agents_original__")
    assert not hasattr(SyncTaskRunEngine.handle_crash, "__otel_agents_original__")
    etl(1)
    assert nonzero(points(reader, FLOWS)) == {}


def test_prefect_not_imported_by_otel_agents() -> None:
    import subprocess
    import sys

    code = "import sys, otel_agents.etl, otel_agents.prefect; print('prefect' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path.cwd()
    )
    assert out.stdout.strip() == "False"
