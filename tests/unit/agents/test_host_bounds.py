"""Nothing a host passes (arguments, settings, files) makes the library raise, block or spin.

Real exporters against real gRPC servers on loopback: one that keeps every export, one
that refuses them, a port that accepts connections and never answers (blackholed).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as service_grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from otlp_receiver import OtlpReceiver, otlp_receiver

from otel_agents import AgentTelemetry, connector_metrics, setup_metrics
from otel_agents.certificate import CertificateFile
from otel_agents.config import MAX_SHUTDOWN_TIMEOUT_S, MIN_EXPORT_INTERVAL_MS, AgentConfig
from otel_agents.env import NO_LIMIT_MS


def agent(endpoint: str, **environ: str) -> AgentTelemetry:
    """A connector exporting to `endpoint` with `environ` as its only settings."""
    telemetry = setup_metrics(
        "bounds-agent",
        "connector",
        api_key="k",
        endpoint=endpoint,
        environ={"OTEL_METRIC_EXPORT_INTERVAL": "600000", **environ},
        set_global=False,
    )
    connector_metrics(telemetry).record_batch(5, 500)
    return telemetry


def within(seconds: float, action: Callable[[], object]) -> object:
    """`action()`'s result; fails (instead of hanging the test) if it takes longer."""
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(action()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still running after {seconds} s"
    assert result, "raised (see the thread's traceback above)"
    return result[0]


def own_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name.startswith("otel_agents") and r.levelno >= logging.WARNING
    ]


@pytest.mark.parametrize("timeout", [float("inf"), 1e10, float("nan"), "5", None])
def test_flush_and_shutdown_take_any_timeout_without_raising(
    caplog: pytest.LogCaptureFixture, timeout: object
) -> None:
    with otlp_receiver() as (receiver, endpoint):
        telemetry = agent(endpoint)
        with caplog.at_level(logging.WARNING):
            assert within(10, lambda: telemetry.force_flush(cast(Any, timeout)))
            assert within(10, lambda: telemetry.force_flush(cast(Any, timeout)))
            assert within(10, lambda: telemetry.shutdown(cast(Any, timeout)))
        warnings = own_warnings(caplog)
    assert len(receiver.requests) == 3
    if timeout is None:
        assert warnings == []
    else:  # once per method, not per call
        assert len(warnings) == 2, [r.getMessage() for r in warnings]
        assert all("logged once" in r.getMessage() for r in warnings)


def test_a_negative_timeout_does_not_wait() -> None:
    with blackholed() as endpoint:
        telemetry = agent(endpoint)
        started = time.monotonic()
        assert within(5, lambda: telemetry.force_flush(-3)) is False
        assert within(5, lambda: telemetry.shutdown(-3)) is False
        assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    ("variable", "value", "field", "clamped"),
    [
        ("OTEL_AGENTS_SHUTDOWN_TIMEOUT", "1e10", "shutdown_timeout_s", MAX_SHUTDOWN_TIMEOUT_S),
        ("OTEL_AGENTS_SHUTDOWN_TIMEOUT", "61", "shutdown_timeout_s", MAX_SHUTDOWN_TIMEOUT_S),
        ("OTEL_METRIC_EXPORT_INTERVAL", "1e13", "export_interval_ms", NO_LIMIT_MS),
        ("OTEL_METRIC_EXPORT_INTERVAL", "1e-9", "export_interval_ms", MIN_EXPORT_INTERVAL_MS),
        ("OTEL_METRIC_EXPORT_INTERVAL", "0.01", "export_interval_ms", MIN_EXPORT_INTERVAL_MS),
        ("OTEL_METRIC_EXPORT_TIMEOUT", "1e13", "export_timeout_ms", NO_LIMIT_MS),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "1e13", "timeout_s", NO_LIMIT_MS / 1000),
    ],
)
def test_settings_out_of_range_are_clamped_with_one_warning(
    variable: str, value: str, field: str, clamped: float
) -> None:
    config = AgentConfig.from_env({variable: value})
    assert getattr(config, field) == clamped
    [warning] = config.warnings  # one, even where the value is also read as seconds
    assert warning.startswith(f"{variable}={value} is out of range")


@pytest.mark.parametrize(
    "setting", [("OTEL_METRIC_EXPORT_INTERVAL", "1e13"), ("OTEL_AGENTS_SHUTDOWN_TIMEOUT", "1e10")]
)
def test_huge_settings_keep_the_final_export(setting: tuple[str, str]) -> None:
    with otlp_receiver() as (receiver, endpoint):
        telemetry = agent(endpoint, **dict([setting]))
        assert within(10, telemetry.shutdown)
        assert len(receiver.requests) == 1


@pytest.mark.slow
def test_a_tiny_export_interval_does_not_spin() -> None:
    with otlp_receiver() as (receiver, endpoint):
        telemetry = agent(endpoint, OTEL_METRIC_EXPORT_INTERVAL="1e-9")
        time.sleep(1.0)  # a measurement window, not synchronisation
        exported = len(receiver.requests)
        telemetry.shutdown()
    # Every 100 ms at most: about 10 in a second (before the floor: thousands).
    assert 1 <= exported <= 15


def test_a_fifo_as_certificate_is_refused_without_blocking(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fifo = tmp_path / "ca.pem"
    os.mkfifo(fifo)
    with caplog.at_level(logging.WARNING):
        telemetry = within(
            5,
            lambda: setup_metrics(
                "bounds-agent",
                "connector",
                api_key="k",
                environ={
                    "OTEL_EXPORTER_OTLP_ENDPOINT": "https://127.0.0.1:4317",
                    "OTEL_EXPORTER_OTLP_CERTIFICATE": str(fifo),
                },
                set_global=False,
            ),
        )
        days = within(5, CertificateFile(fifo).days_left)
    assert isinstance(telemetry, AgentTelemetry)
    assert not telemetry.enabled
    assert days is None
    [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "not a regular file" in error.getMessage()
    assert error.exc_info is None


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://[::1:4317",
        "http://::1]:4317",
        "http://[zz]:4317",
        "https://[::1",
        "http://[::1]]:4317",
    ],
)
def test_a_malformed_endpoint_is_one_line_without_traceback(
    caplog: pytest.LogCaptureFixture, endpoint: str
) -> None:
    with caplog.at_level(logging.DEBUG, logger="otel_agents"):
        from_env = setup_metrics(
            "s", "connector", api_key="k", environ={"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
        )
        from_argument = setup_metrics("s", "connector", api_key="k", endpoint=endpoint, environ={})
    assert not from_env.enabled
    assert not from_argument.enabled
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in errors)
    assert "http://[::1]:4317" in errors[0].getMessage()


class RefusingReceiver(service_grpc.MetricsServiceServicer):
    """Refuses every export as a gateway refuses a bad key (not retried by the exporter)."""

    def Export(
        self, request: ExportMetricsServiceRequest, context: grpc.ServicerContext
    ) -> ExportMetricsServiceResponse:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "refused")


@contextmanager
def refusing_receiver() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(2), options=[("grpc.so_reuseport", 0)])
    service_grpc.add_MetricsServiceServicer_to_server(RefusingReceiver(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop(None)


@contextmanager
def blackholed() -> Iterator[str]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


@pytest.mark.parametrize(
    ("gateway", "what"), [(refusing_receiver, "refused"), (blackholed, "1.0 s")]
)
def test_a_lost_final_export_makes_shutdown_false_with_one_line(
    caplog: pytest.LogCaptureFixture, gateway: Callable[[], Any], what: str
) -> None:
    with gateway() as endpoint:
        telemetry = agent(endpoint)
        with caplog.at_level(logging.WARNING, logger="otel_agents"):
            started = time.monotonic()
            assert telemetry.shutdown(timeout_s=1.0) is False
            took = time.monotonic() - started
            assert telemetry.shutdown() is False  # the same result, no second line
    assert took < 2.0
    [line] = own_warnings(caplog)
    assert "final export is lost" in line.getMessage()
    assert what in line.getMessage()


def test_a_delivered_final_export_makes_shutdown_true(caplog: pytest.LogCaptureFixture) -> None:
    receiver: OtlpReceiver
    with otlp_receiver() as (receiver, endpoint):
        telemetry = agent(endpoint)
        with caplog.at_level(logging.WARNING, logger="otel_agents"):
            assert telemetry.shutdown() is True
    assert len(receiver.requests) == 1
    assert own_warnings(caplog) == []


def test_a_refused_flush_makes_force_flush_false(caplog: pytest.LogCaptureFixture) -> None:
    """The SDK's flush says True whatever the export's result (before: True here)."""
    with refusing_receiver() as endpoint:
        telemetry = agent(endpoint)
        with caplog.at_level(logging.WARNING, logger="otel_agents"):
            assert telemetry.force_flush(timeout_s=2.0) is False
    [line] = own_warnings(caplog)
    assert "flush was refused" in line.getMessage()


def test_a_delivered_flush_makes_force_flush_true() -> None:
    receiver: OtlpReceiver
    with otlp_receiver() as (receiver, endpoint):
        telemetry = agent(endpoint)
        assert telemetry.force_flush(timeout_s=5.0) is True
    assert len(receiver.requests) == 1
