"""setup_metrics and ConnectorMetrics: names, values, resource, failures, bounded shutdown."""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import metrics
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader, Sum
from otlp_receiver import OtlpReceiver, otlp_receiver

import otel_agents.setup as agents_setup
from otel_agents import AgentTelemetry, connector_metrics, setup_metrics


@pytest.fixture
def telemetry() -> Iterator[tuple[AgentTelemetry, InMemoryMetricReader]]:
    reader = InMemoryMetricReader()
    t = setup_metrics(
        "orders-sync",
        "connector",
        service_version="1.2.3",
        environ={"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test"},
        reader=reader,
        set_global=False,
    )
    yield t, reader
    t.shutdown()


def sums(reader: InMemoryMetricReader) -> dict[str, tuple[str | None, Sum]]:
    data = reader.get_metrics_data()
    assert data is not None
    [resource_metrics] = data.resource_metrics
    [scope] = resource_metrics.scope_metrics
    assert scope.scope.name == "otel_agents"
    result = {}
    for metric in scope.metrics:
        if isinstance(metric.data, Sum):  # the status gauges are tested elsewhere
            result[metric.name] = (metric.unit, metric.data)
    return result


def test_record_batch_counts_rows_and_bytes_on_two_plain_counters(
    telemetry: tuple[AgentTelemetry, InMemoryMetricReader],
) -> None:
    t, reader = telemetry
    assert t.enabled
    connector = connector_metrics(t)
    connector.record_batch(10, 2048)
    connector.record_batch(5, 1000)

    found = sums(reader)
    assert {"connector.bytes_sent", "connector.records_sent"} <= set(found)
    for name, unit, total in [
        ("connector.bytes_sent", "By", 3048),
        ("connector.records_sent", "{record}", 15),
    ]:
        got_unit, data = found[name]
        assert got_unit == unit
        assert data.is_monotonic
        assert data.aggregation_temporality is AggregationTemporality.CUMULATIVE
        [point] = data.data_points
        assert point.value == total
        assert dict(point.attributes or {}) == {}  # no tenant: the gateway stamps it


def test_series_exist_at_zero_before_the_first_batch(
    telemetry: tuple[AgentTelemetry, InMemoryMetricReader],
) -> None:
    t, reader = telemetry
    connector_metrics(t)
    assert {name: data.data_points[0].value for name, (_, data) in sums(reader).items()} == {
        "connector.bytes_sent": 0,
        "connector.records_sent": 0,
        "connector.queries_processed": 0,
    }


def test_the_resource_identifies_service_instance_and_agent_type(
    telemetry: tuple[AgentTelemetry, InMemoryMetricReader],
) -> None:
    t, reader = telemetry
    connector_metrics(t).record_batch(1, 1)
    data = reader.get_metrics_data()
    assert data is not None
    attributes = dict(data.resource_metrics[0].resource.attributes)
    instance_id = str(attributes.pop("service.instance.id"))
    # Stable across restarts: a UUID v5 of this machine and the service (identity.py).
    assert uuid.UUID(instance_id).version == 5
    assert attributes.pop("host.name") == socket.gethostname()
    assert attributes == {
        "service.name": "orders-sync",
        "service.version": "1.2.3",
        "agent.type": "connector",
        "deployment.environment": "test",
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": attributes["telemetry.sdk.version"],
    }


def test_the_environment_overrides_service_name_and_instance_id_but_not_agent_type() -> None:
    reader = InMemoryMetricReader()
    environ = {
        "OTEL_SERVICE_NAME": "from-env",
        "OTEL_RESOURCE_ATTRIBUTES": "service.instance.id=pod-7,agent.type=other",
    }
    t = setup_metrics("in-code", "etl", environ=environ, reader=reader, set_global=False)
    connector_metrics(t).record_batch(1, 1)
    data = reader.get_metrics_data()
    assert data is not None
    attributes = data.resource_metrics[0].resource.attributes
    assert attributes["service.name"] == "from-env"
    assert attributes["service.instance.id"] == "pod-7"
    assert attributes["agent.type"] == "etl"
    assert t.shutdown()


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"environ": {"OTEL_AGENTS_API_KEY": "caf\u00e9"}}, "OTEL_AGENTS_API_KEY"),
        ({"environ": {"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://gw:21"}}, "ENDPOINT"),
        ({"environ": {}, "api_key": "top secret"}, "api_key"),
        ({"environ": {}, "agent_type": "prefect"}, "agent_type"),
        (
            {
                "environ": {
                    "OTEL_EXPORTER_OTLP_ENDPOINT": "https://gw:4317",
                    "OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent/ca.pem",
                }
            },
            "CERTIFICATE",
        ),
    ],
)
def test_a_bad_setting_logs_one_error_and_disables_metrics_without_raising(
    caplog: pytest.LogCaptureFixture, kwargs: dict[str, Any], named: str
) -> None:
    arguments: dict[str, Any] = {"agent_type": "connector", "set_global": False, **kwargs}
    with caplog.at_level(logging.WARNING):
        t = setup_metrics("orders-sync", **arguments)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert named in errors[0].getMessage()
    assert "secret" not in caplog.text
    assert not t.enabled
    connector_metrics(t).record_batch(3, 10)  # instruments still work, as no-ops
    assert t.force_flush(1)
    assert t.shutdown(timeout_s=1)


def test_otel_sdk_disabled_turns_metrics_off_quietly(caplog: pytest.LogCaptureFixture) -> None:
    t = setup_metrics("svc", "etl", environ={"OTEL_SDK_DISABLED": "true"}, set_global=False)
    assert not t.enabled
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_global_meter_provider_is_set_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    installed: list[object] = []
    monkeypatch.setattr(agents_setup, "_global_installed", False)
    monkeypatch.setattr(metrics, "set_meter_provider", installed.append)
    first = setup_metrics("svc", "etl", environ={}, reader=InMemoryMetricReader())
    second = setup_metrics("svc", "etl", environ={}, reader=InMemoryMetricReader())
    assert installed == [first.meter_provider]
    assert "earlier setup_metrics call" in caplog.text
    assert first.shutdown()
    assert second.shutdown()


@pytest.fixture
def collector() -> Iterator[tuple[OtlpReceiver, int]]:
    with otlp_receiver() as (receiver, endpoint):
        yield receiver, int(endpoint.rsplit(":", 1)[1])


def test_exports_over_grpc_with_the_bearer_key_and_cumulative_totals(
    collector: tuple[OtlpReceiver, int],
) -> None:
    servicer, port = collector
    t = setup_metrics(
        "orders-sync",
        "connector",
        api_key="key-123",
        endpoint=f"http://127.0.0.1:{port}",
        environ={},
        set_global=False,
    )
    connector_metrics(t).record_batch(7, 700)
    assert t.force_flush(5)
    assert t.shutdown(timeout_s=5)

    request, metadata = servicer.received[0]
    assert metadata["authorization"] == "Bearer key-123"
    [resource_metrics] = request.resource_metrics
    resource = {kv.key: kv.value.string_value for kv in resource_metrics.resource.attributes}
    assert (resource["service.name"], resource["agent.type"]) == ("orders-sync", "connector")
    [scope] = resource_metrics.scope_metrics
    totals = {m.name: (m.unit, m.sum) for m in scope.metrics if m.HasField("sum")}
    assert {"connector.bytes_sent", "connector.records_sent"} <= set(totals)
    for name, unit, value in [
        ("connector.bytes_sent", "By", 700),
        ("connector.records_sent", "{record}", 7),
    ]:
        got_unit, data = totals[name]
        assert got_unit == unit
        assert data.aggregation_temporality == AggregationTemporality.CUMULATIVE.value
        assert [(p.as_int, list(p.attributes)) for p in data.data_points] == [(value, [])]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_shutdown_returns_in_bounded_time_when_the_gateway_is_down() -> None:
    t = setup_metrics(
        "svc",
        "connector",
        api_key="k",
        endpoint=f"http://127.0.0.1:{closed_port()}",
        environ={},
        set_global=False,
    )
    assert t.enabled
    connector_metrics(t).record_batch(3, 300)
    started = time.monotonic()
    t.shutdown(timeout_s=1)
    assert time.monotonic() - started < 2


def test_shutdown_gives_up_at_its_deadline_even_if_the_sdk_hangs(
    telemetry: tuple[AgentTelemetry, InMemoryMetricReader],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    t, _ = telemetry
    release = threading.Event()
    monkeypatch.setattr(t.meter_provider, "shutdown", lambda **_: release.wait(10))
    try:
        started = time.monotonic()
        assert t.shutdown(timeout_s=0.3) is False
        assert time.monotonic() - started < 1
        assert "did not finish" in caplog.text
        assert t.shutdown() is False  # idempotent: the first result, at once
    finally:
        release.set()


def test_two_setups_of_one_service_in_one_process_are_not_counted_over_each_other(
    tmp_path: Path,
) -> None:
    with otlp_receiver() as (receiver, endpoint):
        environ = {"XDG_RUNTIME_DIR": str(tmp_path), "OTEL_METRIC_EXPORT_INTERVAL": "600000"}
        first, second = (
            setup_metrics(
                "twice",
                "connector",
                api_key="k",
                endpoint=endpoint,
                environ=environ,
                set_global=False,
            )
            for _ in range(2)
        )
        connector_metrics(first).record_batch(3, 30)
        connector_metrics(second).record_batch(4, 40)
        assert first.shutdown(5)
        assert second.shutdown(5)
        latest = receiver.latest("connector.records_sent")
    assert sum(latest.values()) == 7


def test_a_setup_after_a_shutdown_is_the_same_agent_again(tmp_path: Path) -> None:
    """Two live setups are two agents; one set up again after its shutdown keeps its id."""

    def instance_of(t: AgentTelemetry) -> str:
        return str(t.meter_provider._sdk_config.resource.attributes["service.instance.id"])  # type: ignore[attr-defined]

    def setup() -> AgentTelemetry:
        return setup_metrics("again", "connector", reader=InMemoryMetricReader(), set_global=False)

    first, second = setup(), setup()
    ids = instance_of(first), instance_of(second)
    assert ids[0] != ids[1]
    second.shutdown(1)
    third = setup()
    assert instance_of(third) == ids[1]
    first.shutdown(1)
    third.shutdown(1)


@pytest.mark.parametrize("argument", ["service_name", "service_version"])
def test_an_argument_that_is_not_utf8_is_one_error_line(
    caplog: pytest.LogCaptureFixture, argument: str
) -> None:
    """Bytes that are not UTF-8 (from sys.argv, a file name) arrive as lone surrogates:
    before, a traceback (service_name) or a failing encoding at every export."""
    arguments = {"service_name": "conn", "service_version": "1.0", argument: "x\udcff"}
    with caplog.at_level(logging.WARNING, logger="otel_agents"):
        telemetry = setup_metrics(
            arguments["service_name"],
            "connector",
            service_version=arguments["service_version"],
            reader=InMemoryMetricReader(),
            set_global=False,
        )
    assert not telemetry.enabled
    [line] = [r for r in caplog.records if r.name.startswith("otel_agents")]
    assert argument in line.getMessage()
    assert line.exc_info is None
