"""setup_metrics against the real gateway: both protocols, TLS and mutual TLS, and every
setting that once made the SDK's exporters fail or mislead, each with its one log line."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from live_gateway import LiveGateway, live_gateway
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_agents import AgentTelemetry, connector_metrics, setup_metrics
from stack.pki import SPIFFE, Pki


def _send(environ: dict[str, str] | None, bytes_sent: int = 700) -> AgentTelemetry:
    """An agent that counts one batch and exports it now."""
    telemetry = setup_metrics("orders-sync", "connector", environ=environ, set_global=False)
    assert telemetry.enabled
    connector_metrics(telemetry).record_batch(7, bytes_sent)
    assert telemetry.force_flush(10)
    return telemetry


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and text in r.getMessage()
    ]


@pytest.mark.parametrize(
    "variables",
    [
        # OTLP/HTTP: the base URL gets /v1/metrics appended...
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_ENDPOINT": "{http}"},
        # ...the signal-specific URL is used as is; the _METRICS_ protocol wins.
        {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "{http}/v1/metrics",
        },
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "{grpc}"},
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_COMPRESSION": "none"},
    ],
)
def test_each_protocol_reaches_the_gateway_under_the_keys_tenant(
    gateway: LiveGateway, variables: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": gateway.grpc_endpoint,
        **{
            name: value.format(http=gateway.http_base, grpc=gateway.grpc_endpoint)
            for name, value in variables.items()
        },
        "OTEL_AGENTS_API_KEY": gateway.keys["globex"],
    }
    with caplog.at_level(logging.WARNING):
        telemetry = _send(environ)
    assert gateway.latest("connector.bytes_sent") == {"globex": 700}
    assert gateway.latest("connector.records_sent") == {"globex": 7}
    assert not _warnings(caplog, "")
    assert telemetry.shutdown(timeout_s=5)


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
@pytest.mark.parametrize("variant", ["", "METRICS_"])
def test_mutual_tls_from_the_certificate_variables_alone(
    tmp_path: Path, pki: Pki, protocol: str, variant: str
) -> None:
    ca, server, client = pki.ca, pki.server, pki.acme_uri
    with live_gateway(
        tmp_path,
        tls_cert_file=server.cert,
        tls_key_file=server.key,
        tls_client_ca_file=ca.cert_file,
        tls_client_tenant="uri",
        tls_client_uri_prefix=SPIFFE,
    ) as tls_gateway:
        base = tls_gateway.grpc_endpoint if protocol == "grpc" else tls_gateway.http_base
        environ = {
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_EXPORTER_OTLP_ENDPOINT": base,
            f"OTEL_EXPORTER_OTLP_{variant}CERTIFICATE": str(ca.cert_file),
            f"OTEL_EXPORTER_OTLP_{variant}CLIENT_CERTIFICATE": str(client.cert),
            f"OTEL_EXPORTER_OTLP_{variant}CLIENT_KEY": str(client.key),
        }
        telemetry = _send(environ, bytes_sent=31)
        # No API key: the tenant comes from the client certificate.
        assert tls_gateway.latest("connector.bytes_sent") == {"acme": 31}
        assert telemetry.shutdown(timeout_s=5)


def test_an_unreadable_client_key_is_one_error_and_no_exporter(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    ca, client = pki.ca, pki.acme_uri
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://127.0.0.1:4317",
        "OTEL_EXPORTER_OTLP_CERTIFICATE": str(ca.cert_file),
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": str(client.cert),
        "OTEL_EXPORTER_OTLP_CLIENT_KEY": str(tmp_path / "missing.key"),
    }
    telemetry = setup_metrics("svc", "connector", environ=environ, set_global=False)
    assert not telemetry.enabled
    [error] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "OTEL_EXPORTER_OTLP_(METRICS_)CLIENT_KEY" in error
    assert "missing.key" in error


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_a_timeout_written_in_seconds_still_exports_and_says_so_once(
    gateway: LiveGateway, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    base = gateway.grpc_endpoint if protocol == "grpc" else gateway.http_base
    environ = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_ENDPOINT": base,
        "OTEL_EXPORTER_OTLP_TIMEOUT": "5",
        "OTEL_AGENTS_API_KEY": gateway.keys["acme"],
    }
    with caplog.at_level(logging.WARNING):
        telemetry = _send(environ)
    assert gateway.latest("connector.bytes_sent") == {"acme": 700}
    [warning] = _warnings(caplog, "OTEL_EXPORTER_OTLP_TIMEOUT")
    assert "read as 5 seconds" in warning
    assert "write 5000" in warning
    assert telemetry.shutdown(timeout_s=5)


@pytest.mark.parametrize(
    ("variable", "value", "protocol", "mentions"),
    [
        # The gRPC exporter itself parses this with float(): it raised, for "" too.
        ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "", "grpc", 0),
        ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "10s", "grpc", 1),
        # Both exporters log their own warning for these, besides ours.
        ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "sideways", "grpc", 1),
        ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta", "http/protobuf", 1),
        ("OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION", "log", "http/protobuf", 1),
        ("OTEL_EXPORTER_OTLP_HEADERS", "bad key=1", "http/protobuf", 1),
    ],
)
def test_values_the_sdk_reads_itself_neither_break_export_nor_log_twice(
    gateway: LiveGateway,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    variable: str,
    value: str,
    protocol: str,
    mentions: int,
) -> None:
    base = gateway.grpc_endpoint if protocol == "grpc" else gateway.http_base
    for name, setting in {
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_ENDPOINT": base,
        "OTEL_AGENTS_API_KEY": gateway.keys["acme"],
        variable: value,
    }.items():
        monkeypatch.setenv(name, setting)
    with caplog.at_level(logging.WARNING):
        telemetry = _send(None)
    assert gateway.latest("connector.bytes_sent") == {"acme": 700}
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == mentions, warnings
    assert all(variable in warning for warning in warnings)
    assert telemetry.shutdown(timeout_s=5)


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_the_default_histogram_aggregation_is_honoured(gateway: LiveGateway, protocol: str) -> None:
    base = gateway.grpc_endpoint if protocol == "grpc" else gateway.http_base
    environ = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_ENDPOINT": base,
        "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION": (
            "base2_exponential_bucket_histogram"
        ),
        "OTEL_AGENTS_API_KEY": gateway.keys["acme"],
    }
    telemetry = setup_metrics("svc", "etl", environ=environ, set_global=False)
    histogram = telemetry.meter.create_histogram("agent.test_duration", unit="s")
    for seconds in (0.5, 2.0, 8.0):
        histogram.record(seconds)
    assert telemetry.force_flush(10)
    kinds = {
        metric.name: metric.WhichOneof("data")
        for request in gateway.collector.received
        for resource in request.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    assert kinds["agent.test_duration"] == "exponential_histogram"
    assert telemetry.shutdown(timeout_s=5)


def test_metrics_exporter_none_turns_metrics_off_with_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="otel_agents"):
        telemetry = setup_metrics(
            "svc", "etl", environ={"OTEL_METRICS_EXPORTER": "none"}, set_global=False
        )
    assert not telemetry.enabled
    assert [r.getMessage() for r in caplog.records] == [
        "otel_agents: metrics disabled by OTEL_METRICS_EXPORTER=none"
    ]


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_a_bare_host_port_meeting_a_plaintext_gateway_gets_a_hint(
    gateway: LiveGateway, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = gateway.grpc_port if protocol == "grpc" else gateway.http_port
    environ = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        # No scheme: TLS, as the specification says; this gateway is plaintext.
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1000",
        "OTEL_AGENTS_API_KEY": gateway.keys["acme"],
    }
    telemetry = setup_metrics("svc", "connector", environ=environ, set_global=False)
    connector_metrics(telemetry).record_batch(1, 1)
    with caplog.at_level(logging.WARNING):
        telemetry.force_flush(10)
        telemetry.force_flush(10)
    [hint] = _warnings(caplog, "otel_agents: exports fail")
    assert f"127.0.0.1:{port} with no scheme, which means TLS" in hint
    plaintext = f"http://127.0.0.1:{port}" + ("" if protocol == "grpc" else "/v1/metrics")
    assert f"write {plaintext}" in hint
    assert gateway.latest("connector.bytes_sent") == {}
    telemetry.shutdown(timeout_s=2)


def test_plaintext_meeting_a_tls_gateway_gets_a_hint(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    server = pki.server
    with live_gateway(tmp_path, tls_cert_file=server.cert, tls_key_file=server.key) as tls:
        environ = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{tls.grpc_port}",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "1000",
            "OTEL_AGENTS_API_KEY": tls.keys["acme"],
        }
        telemetry = setup_metrics("svc", "connector", environ=environ, set_global=False)
        connector_metrics(telemetry).record_batch(1, 1)
        with caplog.at_level(logging.WARNING):
            telemetry.force_flush(10)
        [hint] = _warnings(caplog, "otel_agents: exports fail")
        assert f"write https://127.0.0.1:{tls.grpc_port}" in hint
        telemetry.shutdown(timeout_s=2)


@pytest.mark.parametrize(
    ("value", "expected", "warnings"),
    [("ALWAYS_ON", "AlwaysOnExemplarFilter", 0), ("sometimes", "TraceBasedExemplarFilter", 1)],
)
def test_the_exemplar_filter_is_read_as_the_specification_says(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    value: str,
    expected: str,
    warnings: int,
) -> None:
    # The SDK's MeterProvider reads this itself and raised on both values.
    monkeypatch.setenv("OTEL_METRICS_EXEMPLAR_FILTER", value)
    with caplog.at_level(logging.WARNING):
        telemetry = setup_metrics("svc", "etl", reader=InMemoryMetricReader(), set_global=False)
    assert telemetry.enabled
    provider: Any = telemetry.meter_provider
    assert type(provider._sdk_config.exemplar_filter).__name__ == expected
    assert len(_warnings(caplog, "OTEL_METRICS_EXEMPLAR_FILTER")) == warnings
    assert telemetry.shutdown()
