"""A real Prefect server for the demo's data agent and the Prefect tests.

Prefect's ephemeral in-process server is slow to start and unreliable (it failed to
start 2 times in 40 and outlived SIGTERM), so the demo and the tests run
`prefect server start` as one more process of the `LocalStack`, with its own
PREFECT_HOME (SQLite database, logs) under the stack's run directory.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from stack.local import LocalStack, Process, free_port


def prefect_server_url(port: int) -> str:
    """The API URL agents use (PREFECT_API_URL) for a server on `port`."""
    return f"http://127.0.0.1:{port}/api"


def start_prefect_server(stack: LocalStack, port: int = 0, *, ui: bool = True) -> Process:
    """Start `prefect server start` on `port` (0: a free one); wait with `stack.wait_ready`.

    The process's `ready_url` is the API's /health; `api_url(process)` gives PREFECT_API_URL.
    """
    port = port or free_port()
    home = stack.run_dir / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "true" if ui else "false",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        # The server is no agent: keep any enabled plugin (ours included) out of it.
        "PREFECT_PLUGINS_ENABLED": "false",
        # A PREFECT_API_URL inherited from the caller would point at another server.
        "PREFECT_API_URL": prefect_server_url(port),
    }
    argv = [
        sys.executable,
        "-m",
        "prefect",
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--analytics-off",
        "--ui" if ui else "--no-ui",
    ]
    return stack.start_process(
        "prefect-server", argv, env, ready_url=f"{prefect_server_url(port)}/health"
    )


def api_url(process: Process) -> str:
    """PREFECT_API_URL of a server started by `start_prefect_server`."""
    return process.ready_url.removesuffix("/health")


def client_env(process: Process, home: str) -> dict[str, str]:
    """Environment for an agent process using the server: API URL and its own PREFECT_HOME."""
    return {"PREFECT_API_URL": api_url(process), "PREFECT_HOME": home}


@contextmanager
def prefect_server(run_dir: Path) -> Iterator[str]:
    """A server of its own under `run_dir` (for tests); yields its API URL and stops
    exactly that process."""
    stack = LocalStack(run_dir, tenants_file=run_dir / "unused-tenants.json")
    process = start_prefect_server(stack, ui=False)
    try:
        stack.wait_ready(process, timeout=90)
        yield api_url(process)
    finally:
        stack.stop_all()
        assert process.popen.poll() is not None


@contextmanager
def prefect_api(run_dir: Path) -> Iterator[str]:
    """`prefect_server`, with this process's Prefect client pointed at it (its settings
    restored afterwards); yields the API URL. Before the server stops, this process's
    queued logs and events are sent: otherwise Prefect's background workers retry
    against the stopped server at exit for more than a minute."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW,
        temporary_settings,
    )

    with prefect_server(run_dir) as url:
        settings = {
            PREFECT_API_URL: url,
            PREFECT_HOME: str(run_dir / "client"),
            PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "ignore",
        }
        with temporary_settings(settings):
            try:
                yield url
            finally:
                APILogWorker.drain_all(timeout=5)
                EventsWorker.drain_all(timeout=5)
