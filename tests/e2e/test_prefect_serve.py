"""flow.serve() and a process worker with the plugin: each flow run is its own process,
counted exactly once by the long-lived runner/worker process.

A real Prefect server; a `serve()` (or `prefect worker start`) process with
PREFECT_PLUGINS_ENABLED=true and no metrics code; runs that complete, fail, retry, run
subflows, get killed (SIGKILL) and get cancelled. The runner/worker exports every count,
as one identity, to an OTLP receiver in this test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from otlp_receiver import OtlpReceiver, otlp_receiver
from polling import poll
from prefect_fixtures import plugin_distribution

from stack.local import REPO

pytestmark = pytest.mark.e2e
prefect = pytest.importorskip("prefect")

FLOWS = textwrap.dedent(
    """
    import os, signal, time
    from prefect import flow, serve, task

    attempts = {"n": 0}

    @task
    def extract(n: int) -> list[int]:
        return list(range(n))

    @task(retries=2, retry_delay_seconds=0)
    def flaky() -> int:
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise RuntimeError("transient")
        return attempts["n"]

    @flow
    def nightly() -> int:
        flaky()
        return len(extract(3))

    @flow
    def broken() -> None:
        raise ValueError("bad input")

    @flow
    def child() -> int:
        return len(extract(1))

    @flow
    def parent() -> int:
        return child() + child()

    @flow
    def killed() -> None:
        extract(1)
        os.kill(os.getpid(), signal.SIGKILL)

    @flow
    def endless() -> None:
        time.sleep(300)

    if __name__ == "__main__":
        serve(*(f.to_deployment(name="e2e") for f in (nightly, broken, parent, killed, endless)))
    """
)


def _agent_env(prefect_api: str, endpoint: str, tmp_path: Path, **settings: str) -> dict[str, str]:
    """The runner/worker's environment: the plugin switched on, no metrics code anywhere."""
    return {
        **os.environ,
        "PYTHONPATH": f"{plugin_distribution(tmp_path / 'plugin')}{os.pathsep}{REPO}",
        "PREFECT_API_URL": prefect_api,
        "PREFECT_HOME": str(tmp_path / "home"),
        "PREFECT_PLUGINS_ENABLED": "true",
        "PREFECT_PLUGINS_ALLOW": "otel_agents",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_SERVICE_NAME": "e2e-data-agent",
        **settings,
    }


@contextmanager
def started(argv: list[str], env: dict[str, str], tmp_path: Path) -> Iterator[None]:
    """A runner or worker process, stopped (with its flow-run processes) at the end."""
    with (tmp_path / "agent.log").open("wb") as log:
        agent = subprocess.Popen(
            argv,
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield
        finally:
            os.killpg(agent.pid, signal.SIGTERM)
            try:
                agent.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(agent.pid, signal.SIGKILL)
                agent.wait()


def test_serve_counts_each_run_once_from_one_identity(prefect_api: str, tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    (tmp_path / "agent_flows.py").write_text(FLOWS)
    with (
        otlp_receiver() as (receiver, endpoint),
        temporary_settings({PREFECT_API_URL: prefect_api}),
        started(
            [sys.executable, "agent_flows.py"],
            # The setting reaches the runner like any other: from its environment.
            _agent_env(prefect_api, endpoint, tmp_path, OTEL_AGENTS_TASK_DETAIL="true"),
            tmp_path,
        ),
    ):
        _run_scenarios(receiver, tmp_path, task_detail=True)


def test_process_worker_counts_each_run_once_from_one_identity(
    prefect_api: str, tmp_path: Path
) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    (tmp_path / "agent_flows.py").write_text(FLOWS)
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        with get_client(sync_client=True) as client:
            client.create_work_pool(WorkPoolCreate(name="e2e-pool", type="process"))
        for name in ("nightly", "broken", "parent", "killed", "endless"):
            source = flow.from_source(source=str(tmp_path), entrypoint=f"agent_flows.py:{name}")
            source.deploy(  # type: ignore[union-attr]
                name="e2e", work_pool_name="e2e-pool", print_next_steps=False, ignore_warnings=True
            )
        with (
            otlp_receiver() as (receiver, endpoint),
            started(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", "e2e-pool"],
                _agent_env(prefect_api, endpoint, tmp_path),
                tmp_path,
            ),
        ):
            _run_scenarios(receiver, tmp_path, task_detail=False)


def _run_scenarios(receiver: OtlpReceiver, tmp: Path, *, task_detail: bool) -> None:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.states import Cancelling

    def deployed() -> bool:
        with get_client(sync_client=True) as client:
            try:
                client.read_deployment_by_name("endless/e2e")
            except Exception:
                return False
            return True

    poll("the deployments exist", deployed, timeout=60)

    def start(deployment: str) -> UUID:
        run: Any = run_deployment(f"{deployment}/e2e", timeout=0)
        return UUID(str(run.id))

    runs = {name: start(name) for name in ("nightly", "broken", "parent", "killed", "endless")}
    runs["nightly-2"] = start("nightly")

    def state_of(run_id: UUID) -> str:
        with get_client(sync_client=True) as client:
            return str(getattr(client.read_flow_run(run_id).state_type, "value", None))

    poll("endless is running", lambda: state_of(runs["endless"]) == "RUNNING", timeout=90)
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(runs["endless"], Cancelling(), force=True)

    final = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
    states = poll(
        "every run is final",
        lambda: (s := {n: state_of(r) for n, r in runs.items()}) and set(s.values()) <= final and s,
        timeout=120,
    )
    assert states == {
        "nightly": "COMPLETED",
        "nightly-2": "COMPLETED",
        "broken": "FAILED",
        "parent": "COMPLETED",
        "killed": "CRASHED",
        "endless": "CANCELLED",
    }, (tmp / "agent.log").read_text()[-3000:]

    expected_flows = {"nightly": 2, "broken": 1, "parent": 1, "child": 2, "killed": 1, "endless": 1}

    def counts(name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {
            tuple(sorted(labels)): value
            for (_, labels), value in receiver.latest(name).items()
            if value
        }

    def flow_counts() -> dict[str, float]:
        return {
            dict(labels)["flow"]: value for labels, value in counts("agent.flows_executed").items()
        }

    try:
        poll(
            "the runner exported every flow run",
            lambda: flow_counts() == expected_flows,
            timeout=90,
        )
    except AssertionError:
        raise AssertionError(
            f"{flow_counts()} != {expected_flows}\n" + (tmp / "agent.log").read_text()[-3000:]
        ) from None

    success = {dict(labels)["flow"]: v for labels, v in counts("agent.flows_success").items()}
    assert success == {"nightly": 2, "parent": 1, "child": 2}
    failed = {dict(labels)["flow"]: v for labels, v in counts("agent.flows_failed").items()}
    assert failed == {"broken": 1, "killed": 1}  # failed, crashed; endless was cancelled
    per_task = {
        ("flaky", "nightly"): 2,
        ("extract", "nightly"): 2,
        ("extract", "child"): 2,
        # The killed run's task finished before the kill: it was written at once.
        ("extract", "killed"): 1,
    }
    retries = counts("agent.task_retries")
    if task_detail:
        tasks = {
            (dict(labels)["task"], dict(labels).get("flow")): v
            for labels, v in counts("agent.tasks_executed").items()
        }
        assert tasks == per_task
        assert retries == {(("flow", "nightly"), ("task", "flaky")): 2}
    else:  # one series per agent
        assert counts("agent.tasks_executed") == {(): sum(per_task.values())}
        assert retries == {(): 2}
    # Series do not multiply per run: one process, one identity, exported everything.
    assert len(receiver.instances()) == 1
