"""A Prefect agent's name and version: given, from the standard variables, or derived and said."""

from __future__ import annotations

import logging
import types

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_agents import setup_metrics
from otel_agents.prefect.naming import AgentName, agent_name, main_script_name
from otel_agents.prefect.sink import LazyMetrics


def _module(file: str | None = None, spec: str | None = None) -> types.ModuleType:
    module = types.ModuleType("__main__")
    module.__file__ = file
    module.__spec__ = types.SimpleNamespace(name=spec) if spec else None  # type: ignore[assignment]
    return module


SCRIPT = _module("/srv/etl/nightly_etl.py")


@pytest.mark.parametrize(
    ("arguments", "environ", "expected"),
    [
        (("orders-etl", "1.4.0"), {}, AgentName("orders-etl", "1.4.0", "argument", "argument")),
        (
            (None, None),
            {
                "OTEL_SERVICE_NAME": "from-env",
                "OTEL_RESOURCE_ATTRIBUTES": "service.name=ignored,service.version=2.0%2Brc1",
            },
            AgentName("from-env", "2.0+rc1", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"),
        ),
        (
            (None, "3.1"),
            {"OTEL_RESOURCE_ATTRIBUTES": "service.name=etl-7"},
            AgentName("etl-7", "3.1", "OTEL_RESOURCE_ATTRIBUTES", "argument"),
        ),
        ((None, None), {}, AgentName("nightly_etl", None, "the main script", "nothing")),
    ],
)
def test_arguments_then_the_standard_variables_then_the_main_script(
    arguments: tuple[str | None, str | None], environ: dict[str, str], expected: AgentName
) -> None:
    assert agent_name(*arguments, environ=environ, main=SCRIPT) == expected


@pytest.mark.parametrize(
    ("main", "argv", "expected"),
    [
        (_module("/srv/etl/nightly_etl.py"), [], "nightly_etl"),
        (_module("/srv/etl/run/__main__.py", spec="etl.run.__main__"), [], "etl.run"),
        (_module(spec="etl.run"), [], "etl.run"),
        (_module(), ["/usr/local/bin/prefect", "worker", "start"], "prefect"),
        (_module(), ["-c"], None),
        (_module(), [""], None),
    ],
)
def test_the_main_scripts_name(main: types.ModuleType, argv: list[str], expected: str) -> None:
    assert main_script_name(main, argv) == expected


def test_nothing_names_an_interactive_agent_and_the_note_says_what_to_set() -> None:
    name = agent_name(None, None, environ={}, main=_module(), argv=["-c"])
    assert (name.service_name, name.version) == ("prefect-agent", None)
    note = name.note()
    assert note is not None
    assert "'prefect-agent', as nothing else names it" in note
    assert "has no version, so Prometheus shows none" in note
    for setting in ("service_name=", "version=", "OTEL_SERVICE_NAME", "service.version"):
        assert setting in note


def test_nothing_is_said_when_the_agent_is_fully_named() -> None:
    assert agent_name("etl", "1.0", environ={}).note() is None
    environ = {"OTEL_SERVICE_NAME": "etl", "OTEL_RESOURCE_ATTRIBUTES": "service.version=1.0"}
    assert agent_name(None, None, environ=environ).note() is None


def test_a_later_call_keeps_what_an_earlier_one_was_given() -> None:
    plugin = agent_name(None, None, environ={}, main=SCRIPT)
    caller = agent_name("orders-etl", "1.4.0", environ={})
    assert caller.over(plugin) == caller
    assert plugin.over(caller) == caller


def _service_version(reader: InMemoryMetricReader) -> object:
    data = reader.get_metrics_data()
    assert data is not None
    return data.resource_metrics[0].resource.attributes.get("service.version")


@pytest.mark.parametrize(
    ("asked", "given", "shown", "logged"),
    [
        ("1.4.0", "1.4.0", "1.4.0", []),
        # The telemetry's version is the one Prometheus shows (target_info): said once.
        ("1.4.0", None, None, ["version '1.4.0' is not reported"]),
        (None, "1.4.0", "1.4.0", []),
        # Never this library's version: none is known, so none is shown, and one line.
        (None, None, None, ["has no version"]),
    ],
)
def test_the_agents_version_and_never_the_librarys_is_reported(
    asked: str | None,
    given: str | None,
    shown: str | None,
    logged: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    reader = InMemoryMetricReader()
    telemetry = setup_metrics(
        "etl", "etl", environ={}, reader=reader, service_version=given, set_global=False
    )
    name = AgentName("etl", asked, "argument", "argument" if asked else "nothing")
    lazy = LazyMetrics(name, telemetry, lambda *_: None)
    with caplog.at_level(logging.WARNING):
        assert lazy() is not None
    assert _service_version(reader) == shown
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == len(logged), lines
    assert all(part in line for part, line in zip(logged, lines, strict=True))
    assert telemetry.shutdown()
