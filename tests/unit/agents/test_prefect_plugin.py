"""The Prefect plugin: its role in each kind of process, and Prefect accepting it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from otel_agents.prefect.plugin import process_role
from otel_agents.prefect.spool import SPOOL_ENV

pytest.importorskip("prefect")

PARENT_SPOOL = f"/tmp/otel-agents-prefect-{os.getpid() + 1}-0123abcd"
MY_SPOOL = f"/tmp/otel-agents-prefect-{os.getpid()}-0123abcd"


@pytest.mark.parametrize(
    ("environ", "argv", "role"),
    [
        ({}, ["/venv/bin/prefect", "server", "start"], "server"),
        ({}, ["/venv/bin/prefect", "--profile", "x", "server", "services", "manager"], "server"),
        ({"PREFECT__SERVER_FINAL": "1"}, ["python", "-m", "uvicorn"], "server"),
        ({}, ["-m", "uvicorn", "--factory", "prefect.server.api.server:create_app"], "server"),
        ({SPOOL_ENV: PARENT_SPOOL, "PREFECT__FLOW_RUN_ID": "r"}, ["-m"], "writer"),
        ({SPOOL_ENV: PARENT_SPOOL}, ["-c"], "writer"),  # e.g. a process-pool task worker
        ({"PREFECT__FLOW_RUN_ID": "r"}, ["/x/prefect/engine.py"], "orphan-run"),
        ({SPOOL_ENV: MY_SPOOL}, ["/venv/bin/prefect", "worker", "start"], "worker"),
        ({}, ["/venv/bin/prefect", "worker", "start", "--pool", "p"], "worker"),
        (
            {},
            ["/venv/lib/python3.11/site-packages/prefect/__main__.py", "worker", "start"],
            "worker",
        ),
        ({}, ["serve_flows.py"], "agent"),
        ({}, ["/venv/bin/prefect", "deployment", "run", "x/y"], "agent"),
    ],
)
def test_process_roles(environ: dict[str, str], argv: list[str], role: str) -> None:
    assert process_role(environ, argv) == role


def test_prefect_registers_the_plugin_hook() -> None:
    """Prefect's own plugin manager accepts the module (hook name and signature)."""
    from prefect._internal.plugins.manager import build_manager
    from prefect._internal.plugins.spec import HookSpec

    import otel_agents.prefect.plugin as plugin

    manager = build_manager(HookSpec)
    manager.register(plugin, name="otel_agents")
    [impl] = manager.hook.setup_environment.get_hookimpls()
    assert impl.plugin_name == "otel_agents"


def _plugin_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    info = tmp_path / "site" / "otel_agents_prefect_plugin-0.0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: p\nVersion: 0.0.0\n")
    (info / "entry_points.txt").write_text(
        "[prefect.plugins]\notel_agents = otel_agents.prefect.plugin\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREFECT_"))}
    return {
        **env,
        "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{Path.cwd()}",
        "PREFECT_HOME": str(tmp_path / "home"),
        "PREFECT_PLUGINS_ENABLED": "true",
        "OTEL_SDK_DISABLED": "true",
        **extra,
    }


def test_a_flow_run_process_of_a_counting_runner_writes_to_its_spool(tmp_path: Path) -> None:
    spool = tmp_path / f"otel-agents-prefect-{os.getpid()}-feed"
    env = _plugin_env(tmp_path, **{SPOOL_ENV: str(spool), "PREFECT__FLOW_RUN_ID": "run-1"})
    code = "import prefect; from otel_agents.prefect import current; print(current().mode)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "spool-writer", out.stderr
    [record] = [json.loads(line) for f in spool.iterdir() for line in f.read_text().splitlines()]
    assert record == {"k": "run", "id": "run-1"}


def test_a_plain_process_counts_lazily_and_publishes_a_spool(tmp_path: Path) -> None:
    env = _plugin_env(tmp_path)
    code = (
        "import os, prefect; from otel_agents.prefect import current; h = current(); "
        "print(h.mode, h.metrics is None, os.environ['OTEL_AGENTS_PREFECT_SPOOL'] == "
        "str(h.reader.directory))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    # No flow ran: no telemetry was built, so CLI commands start no exporter.
    assert out.stdout.strip() == "counting True True", out.stderr


def test_plugin_errors_never_reach_prefect(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from otel_agents.prefect import instrumentation, plugin

    def broken(*, eager: bool) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(instrumentation, "install_for_plugin", broken)
    caplog.set_level(logging.WARNING, logger="otel_agents")
    assert plugin.activate({}, ["script.py"]) is None
    assert any("plugin failed" in r.getMessage() for r in caplog.records)
