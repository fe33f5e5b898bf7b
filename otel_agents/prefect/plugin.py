"""Prefect plugin: counts flow runs of `flow.serve()` runners and workers with no code change.

Where this sits: `import prefect` ──(*plugin*)──▶ instrumentation ──▶ EtlMetrics/spool.

Registered as the `otel_agents` entry point of the `prefect.plugins` group; Prefect
runs `setup_environment` during `import prefect` in every process when
PREFECT_PLUGINS_ENABLED=true (limit it with PREFECT_PLUGINS_ALLOW=otel_agents, turn it
off with PREFECT_PLUGINS_DENY=otel_agents). What it does depends on the process:

| process | role | what happens |
|---|---|---|
| Prefect server, its web and service processes | server | nothing |
| flow run started by a runner/worker that counts | writer | runs go to the parent's spool |
| flow run started by a runner/worker that does not count | orphan-run | nothing (logged) |
| `prefect worker start` | worker | counts children; metrics start now |
| anything else (`flow.serve()` script, script, CLI) | agent | counts from the first run on |
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import pluggy

from otel_agents.prefect import instrumentation
from otel_agents.prefect.spool import inherited_spool

_logger = logging.getLogger(__name__)

# Prefect's pluggy project name (kept from its experimental era, still current in 3.9).
hookimpl = pluggy.HookimplMarker("prefect-experimental")

PREFECT_PLUGIN_API_REQUIRES = ">=0.1,<1"
"""Prefect's plugin API versions this plugin works with."""

Role = Literal["server", "writer", "orphan-run", "worker", "agent"]

# Set by `prefect server start` in the processes of the server it starts.
_SERVER_ENV = ("PREFECT__SERVER_FINAL", "PREFECT__SERVER_WEBSERVER_ONLY")


@hookimpl
def setup_environment(*, ctx: Any) -> None:
    """Prefect's startup hook: install counting for this process's role; never raises."""
    activate()


def activate(
    environ: Mapping[str, str] | None = None, argv: Sequence[str] | None = None
) -> Role | None:
    """Install what this process's role needs; return the role (None after an error)."""
    try:
        role = process_role(os.environ if environ is None else environ, argv or sys.argv)
        if role == "orphan-run":
            _logger.info(
                "otel_agents: this flow run's process was not started by a counting runner "
                "or worker; enable PREFECT_PLUGINS_ENABLED=true there to count it"
            )
        elif role != "server":
            instrumentation.install_for_plugin(eager=role == "worker")
        return role
    except Exception:
        _logger.warning("otel_agents: Prefect plugin failed; runs are not counted", exc_info=True)
        return None


def process_role(environ: Mapping[str, str], argv: Sequence[str]) -> Role:
    """What this process is, from its environment and command line."""
    # The command is among the first two words: an option's value may come first.
    words = _prefect_cli_words(argv)[:3]
    if any(environ.get(name) for name in _SERVER_ENV) or "server" in words[:2]:
        return "server"
    if any("prefect.server" in arg for arg in argv[1:]):
        return "server"  # uvicorn serving prefect.server.api.server:create_app
    if inherited_spool(environ) is not None:
        return "writer"
    if environ.get(instrumentation.FLOW_RUN_ID_ENV):
        return "orphan-run"
    if words[:2] == ["worker", "start"] or words[1:3] == ["worker", "start"]:
        return "worker"
    return "agent"


def _prefect_cli_words(argv: Sequence[str]) -> list[str]:
    """The subcommand words of a `prefect ...` or `python -m prefect ...` command line."""
    if not argv:
        return []
    program = argv[0].replace("\\", "/")
    if os.path.basename(program) != "prefect" and not program.endswith("prefect/__main__.py"):
        return []
    return [arg for arg in argv[1:] if not arg.startswith("-")]
