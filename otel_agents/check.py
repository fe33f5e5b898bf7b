"""`otel-agents check`: is this machine able to send metrics to the gateway?

Run on a customer's machine with the agent's environment. Each step says what it
found in plain words and, when something is wrong, what to change. Exit status 0
when a test point was accepted, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from otel_agents.config import AgentConfig, ConfigError

TENANT_HEADER = "x-otel-tenant"
"""The gateway answers an accepted export with the tenant it was stored under."""

TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Step:
    """The outcome of one check."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def _host_port(endpoint: str) -> tuple[str, int]:
    parts = urlsplit(endpoint)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 4317)


def check_resolution(host: str) -> Step:
    """The gateway's name resolves."""
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        return Step(
            "name resolution",
            False,
            f"{host!r} does not resolve ({exc.strerror})",
            "check the host in OTEL_EXPORTER_OTLP_ENDPOINT and this machine's DNS settings",
        )
    return Step("name resolution", True, f"{host} → {', '.join(sorted(addresses))}")


def check_tcp(host: str, port: int) -> Step:
    """Something accepts TCP connections on the gateway's port."""
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT_S):
            pass
    except OSError as exc:
        return Step(
            "connection",
            False,
            f"cannot connect to {host}:{port} ({exc.strerror or exc})",
            "check the port in OTEL_EXPORTER_OTLP_ENDPOINT; a firewall may block outgoing "
            f"connections to port {port}",
        )
    return Step("connection", True, f"{host}:{port} accepts connections")


def probe_tls(host: str, port: int, ca_file: str | None) -> tuple[bool, str]:
    """(speaks TLS, detail): whether a TLS handshake succeeds and what it said."""
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout=TIMEOUT_S) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            return True, f"TLS {tls.version()}, certificate verified"
    except ssl.SSLCertVerificationError as exc:
        return True, f"TLS, but the certificate is not trusted: {exc.verify_message}"
    except (ssl.SSLError, OSError) as exc:
        return False, str(exc)


def check_tls(config: AgentConfig, host: str, port: int) -> Step:
    """The endpoint's scheme matches what the gateway speaks."""
    speaks_tls, detail = probe_tls(host, port, config.certificate_file)
    if config.use_tls and not speaks_tls:
        return Step(
            "TLS",
            False,
            f"you configured TLS but {host}:{port} does not complete a TLS handshake ({detail})",
            "if the gateway is plaintext, use http:// in OTEL_EXPORTER_OTLP_ENDPOINT; "
            "otherwise a proxy may be intercepting the connection",
        )
    if config.use_tls and "not trusted" in detail:
        return Step(
            "TLS",
            False,
            detail,
            "set OTEL_EXPORTER_OTLP_CERTIFICATE to the PEM file of the CA that signed the "
            "gateway's certificate",
        )
    if not config.use_tls and speaks_tls:
        return Step(
            "TLS",
            False,
            f"{host}:{port} speaks TLS but the endpoint is plaintext (http://)",
            "use https:// in OTEL_EXPORTER_OTLP_ENDPOINT",
        )
    return Step("TLS", True, detail if config.use_tls else "plaintext, as configured")


def _test_request() -> bytes:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.metrics.v1.metrics_pb2 import (
        Gauge,
        Metric,
        NumberDataPoint,
        ResourceMetrics,
        ScopeMetrics,
    )

    point = NumberDataPoint(as_int=1, time_unix_nano=time.time_ns())
    metric = Metric(
        name="otel_agents.check",
        description="Test point sent by `otel-agents check`.",
        gauge=Gauge(data_points=[point]),
    )
    resource = ResourceMetrics(scope_metrics=[ScopeMetrics(metrics=[metric])])
    resource.resource.attributes.append(
        KeyValue(key="service.name", value=AnyValue(string_value="otel-agents-check"))
    )
    return ExportMetricsServiceRequest(resource_metrics=[resource]).SerializeToString()


def check_grpc_export(config: AgentConfig) -> Step:
    """A test point sent over OTLP/gRPC with the key is accepted."""
    import grpc

    host, port = _host_port(config.endpoint)
    target = f"{host}:{port}"
    if config.use_tls:
        root = None
        if config.certificate_file:
            with open(config.certificate_file, "rb") as pem:
                root = pem.read()
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root))
    else:
        channel = grpc.insecure_channel(target)
    export = channel.unary_unary(
        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        request_serializer=None,
        response_deserializer=None,
    )
    try:
        _, call = export.with_call(
            _test_request(), metadata=config.grpc_metadata(), timeout=TIMEOUT_S
        )
    except grpc.RpcError as exc:
        return _explain_grpc_failure(exc)
    finally:
        channel.close()
    # The gateway names the tenant in trailing metadata; initial is read too.
    metadata = (*(call.trailing_metadata() or ()), *(call.initial_metadata() or ()))
    tenant = dict(metadata).get(TENANT_HEADER)
    landing = f" under tenant {tenant!r}" if tenant else ""
    return Step("OTLP/gRPC export", True, f"a test point was accepted{landing}")


def _explain_grpc_failure(exc: object) -> Step:
    import grpc

    assert isinstance(exc, grpc.Call)
    code, details = exc.code(), exc.details() or ""
    name = "OTLP/gRPC export"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Step(
            name,
            False,
            f"the gateway refused the key: {details}",
            "set OTEL_AGENTS_API_KEY to the key the platform team issued for this tenant",
        )
    http_like = any(
        marker in details.lower()
        # How grpc-core reports an HTTP/1.x answer or a proxy's refusal.
        for marker in ("http2 header with status", "http1", "frame type", "content-type", "proxy")
    )
    if http_like or code in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL):
        return Step(
            name,
            False,
            f"something between here and the gateway does not pass gRPC ({code.name}: {details})",
            "a proxy probably blocks HTTP/2 gRPC; use the OTLP/HTTP endpoint instead "
            "(see the next step)",
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        return Step(
            name,
            False,
            f"the gateway is unreachable or busy ({details})",
            "exports are retried automatically; if this persists, tell the platform team",
        )
    return Step(name, False, f"{code.name}: {details}", "tell the platform team")


def http_endpoint(config: AgentConfig) -> str:
    """The gateway's OTLP/HTTP URL: same host and scheme, port 4318."""
    parts = urlsplit(config.endpoint)
    return f"{parts.scheme}://{parts.hostname}:4318/v1/metrics"


def check_http_export(config: AgentConfig, url: str) -> Step:
    """A test point sent over OTLP/HTTP with the key is accepted."""
    if urlsplit(url).scheme not in ("http", "https"):
        return Step("OTLP/HTTP export", False, f"{url} is not an http(s) URL", "fix --http-url")
    headers = {"content-type": "application/x-protobuf", **dict(config.grpc_metadata())}
    request = urllib.request.Request(  # noqa: S310 (scheme checked above)
        url, data=_test_request(), headers=headers, method="POST"
    )
    context = ssl.create_default_context(cafile=config.certificate_file) if config.use_tls else None
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S, context=context) as response:  # noqa: S310
            tenant = response.headers.get(TENANT_HEADER)
    except urllib.error.HTTPError as exc:
        fix = (
            "set OTEL_AGENTS_API_KEY to the key the platform team issued"
            if exc.code == 401
            else "tell the platform team"
        )
        return Step("OTLP/HTTP export", False, f"{url} answered {exc.code} {exc.reason}", fix)
    except (urllib.error.URLError, OSError) as exc:
        return Step("OTLP/HTTP export", False, f"{url}: {exc}", "check the URL and any proxy")
    landing = f" under tenant {tenant!r}" if tenant else ""
    return Step(
        "OTLP/HTTP export",
        True,
        f"a test point was accepted at {url}{landing}",
        "",
    )


def run_checks(environ: Mapping[str, str], http_url: str | None = None) -> list[Step]:
    """Every check in order; later network steps are skipped once one cannot pass."""
    try:
        config = AgentConfig.from_env(environ)
    except ConfigError as exc:
        return [Step("settings", False, str(exc), "fix that variable")]
    host, port = _host_port(config.endpoint)
    key_state = "an API key is set" if config.grpc_metadata() else "NO API key is set"
    steps = [Step("settings", True, f"endpoint {config.endpoint}, {key_state}")]
    steps.append(check_resolution(host))
    if steps[-1].ok:
        steps.append(check_tcp(host, port))
    if not steps[-1].ok:
        return steps
    steps.append(check_tls(config, host, port))
    if not steps[-1].ok:
        return steps
    steps.append(check_grpc_export(config))
    if not steps[-1].ok and "proxy" in steps[-1].fix:
        url = http_url or http_endpoint(config)
        fallback = check_http_export(config, url)
        if fallback.ok:
            fallback = Step(
                fallback.name,
                True,
                fallback.detail,
                f"use OTLP/HTTP: set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf and "
                f"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT={url}",
            )
        steps.append(fallback)
    return steps


def main(argv: list[str] | None = None) -> int:
    """Entry point of `otel-agents`."""
    parser = argparse.ArgumentParser(
        prog="otel-agents",
        description="Tools for agents that send metrics to the platform's gateway.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check", help="check settings, network, TLS and key by sending a test point"
    )
    check.add_argument("--http-url", help="the gateway's OTLP/HTTP URL (default: port 4318)")
    args = parser.parse_args(argv)

    steps = run_checks(os.environ, args.http_url)
    for step in steps:
        mark = "ok  " if step.ok else "FAIL"
        print(f"[{mark}] {step.name}: {step.detail}")
        if step.fix:
            print(f"       → {step.fix}")
    accepted = any(s.ok and "export" in s.name for s in steps)
    print("\nResult: " + ("metrics can be sent." if accepted else "metrics cannot be sent yet."))
    return 0 if accepted else 1


if __name__ == "__main__":
    sys.exit(main())
