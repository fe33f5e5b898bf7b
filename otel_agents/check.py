"""`otel-agents check`: is this machine able to send metrics to the gateway?

Run on a customer's machine with the agent's environment. Each step says what it
found in plain words and, when something is wrong, what to change: the variables to
set are printed as `export NAME=value` lines that make the agent work when followed
(the tests follow them). It sends a test point with the configured protocol; when that
fails in a way another setting would fix (a wrong port, a proxy that speaks HTTP/1.1
only), it tries that setting and says so. Exit status 0 when a test point was accepted
with the settings as they are, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from otel_agents.config import AgentConfig, ConfigError
from otel_agents.endpoint import GRPC_PORT, HTTP_PORT, METRICS_PATH
from otel_agents.testpoint import TENANT_HEADER, Attempt, send_grpc, send_http
from otel_agents.tlsprobe import probe_tls

__all__ = ["TENANT_HEADER", "GatewayPorts", "Step", "main", "run_checks"]

TIMEOUT_S = 5.0
_KEY_FIX = "set OTEL_AGENTS_API_KEY to the key the platform team issued for this tenant"


@dataclass(frozen=True)
class Step:
    """The outcome of one check."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    settings: tuple[tuple[str, str], ...] = ()
    """Variables to set, as the fix says."""
    warning: bool = False
    """Passed, but worth changing (printed `[warn]`)."""
    accepted: bool = False
    """A test point was accepted with the settings as they are."""


@dataclass(frozen=True)
class GatewayPorts:
    """The gateway's ports: OTLP/gRPC and OTLP/HTTP (the OTLP defaults unless told)."""

    grpc: int = GRPC_PORT
    http: int = HTTP_PORT


def run_checks(
    environ: Mapping[str, str], http_url: str | None = None, ports: GatewayPorts | None = None
) -> list[Step]:
    """Every check in order; later network steps are skipped once one cannot pass."""
    ports = ports or GatewayPorts()
    try:
        config = AgentConfig.from_env(environ)
    except ConfigError as exc:
        return [Step("settings", False, str(exc), "fix that variable")]
    steps = [_settings(config)]
    steps += [Step("settings", True, warning, warning=True) for warning in config.warnings]
    host, port = config.target.host_port
    steps.append(check_resolution(host))
    if steps[-1].ok:
        steps.append(check_tcp(host, port))
    if not steps[-1].ok:
        return steps
    steps.append(check_tls(config, environ, host, port))
    if not steps[-1].ok:
        return steps
    if config.protocol == "grpc":
        steps += _grpc_export(config, environ, http_url, ports)
    else:
        steps += _http_export(config, environ, ports)
    return steps


def _settings(config: AgentConfig) -> Step:
    protocol = "OTLP/gRPC" if config.protocol == "grpc" else "OTLP/HTTP"
    where = f"{protocol} to {config.endpoint}"
    if any(key == "authorization" for key, _ in config.grpc_metadata()):
        return Step("settings", True, f"{where}, an API key is set")
    if config.use_tls and config.client_certificate_file and config.client_key_file:
        return Step("settings", True, f"{where}, a client certificate is set (no API key)")
    return Step(
        "settings",
        True,
        f"{where}, but NO API key is set: the gateway will refuse the metrics",
        _KEY_FIX,
        warning=True,
    )


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


def check_tls(config: AgentConfig, environ: Mapping[str, str], host: str, port: int) -> Step:
    """The endpoint's scheme matches what the gateway speaks."""
    probe = probe_tls(host, port, config.certificate_file, TIMEOUT_S)
    variable = _endpoint_variable(config)
    if config.use_tls and probe.verdict == "plaintext":
        implied = " (no scheme means TLS)" if config.tls_implied else ""
        return Step(
            "TLS",
            False,
            f"{variable} asks for TLS{implied} but {host}:{port} does not complete a TLS "
            f"handshake ({probe.detail})",
            "if the gateway is plaintext, use http://; otherwise a proxy may be intercepting "
            "the connection",
            settings=((variable, _with_scheme(environ.get(variable, ""), "http")),),
        )
    if config.use_tls and probe.verdict == "untrusted":
        return Step(
            "TLS",
            False,
            probe.detail,
            "set OTEL_EXPORTER_OTLP_CERTIFICATE to the PEM file of the CA that signed the "
            "gateway's certificate",
        )
    if not config.use_tls and probe.speaks_tls:
        return Step(
            "TLS",
            False,
            f"{host}:{port} speaks TLS but {variable} is plaintext (http://)",
            "use https://",
            settings=((variable, _with_scheme(environ.get(variable, ""), "https")),),
        )
    return Step("TLS", True, probe.detail if config.use_tls else "plaintext, as configured")


def _grpc_export(
    config: AgentConfig, environ: Mapping[str, str], http_url: str | None, ports: GatewayPorts
) -> list[Step]:
    name = "OTLP/gRPC export"
    attempt = send_grpc(config.endpoint, config)
    if attempt.accepted:
        return [Step(name, True, f"a test point was accepted{attempt.landing}", accepted=True)]
    if attempt.outcome == "key refused":
        return [Step(name, False, f"the gateway refused the key: {attempt.detail}", _KEY_FIX)]
    if attempt.outcome != "not grpc":
        fix = (
            "exports are retried automatically; if this persists, tell the platform team"
            if attempt.outcome == "unreachable"
            else "tell the platform team"
        )
        return [
            Step(name, False, f"the gateway did not take the test point ({attempt.detail})", fix)
        ]
    parts = urlsplit(config.endpoint)
    host, port = parts.hostname or "", parts.port
    if port == ports.http:
        # gRPC sent to the gateway's OTLP/HTTP port: its gRPC port is the fix, if reachable.
        grpc_endpoint = f"{parts.scheme}://{host}:{ports.grpc}"
        on_grpc_port = send_grpc(grpc_endpoint, config)
        if on_grpc_port.accepted:
            return [
                Step(
                    name,
                    False,
                    f"{host}:{port} answers HTTP/1.1, not gRPC: it is the gateway's OTLP/HTTP "
                    f"port ({attempt.detail})",
                    f"wrong port: the gateway takes OTLP/gRPC on port {ports.grpc}",
                    settings=((_endpoint_variable(config), grpc_endpoint),),
                ),
                Step(
                    f"OTLP/gRPC export to port {ports.grpc}",
                    True,
                    f"a test point was accepted{on_grpc_port.landing}",
                ),
            ]
    failed = Step(
        name,
        False,
        f"{host}:{port} answers HTTP/1.1, not gRPC: a proxy or load balancer that does not "
        f"pass HTTP/2 is in the way ({attempt.detail})",
        "use OTLP/HTTP instead (see the next step)",
    )
    candidates = [http_url] if http_url else _http_candidates(config.endpoint, ports)
    tried: Attempt | None = None
    for url in candidates:
        tried = send_http(url, config)
        if tried.accepted:
            return [failed, _use_http(url, tried, environ)]
    detail = tried.detail if tried is not None else "no URL to try"
    return [
        failed,
        Step(
            "OTLP/HTTP export",
            False,
            f"OTLP/HTTP did not work either ({detail})",
            "give the gateway's OTLP/HTTP URL with --http-url, or tell the platform team",
        ),
    ]


def _http_candidates(endpoint: str, ports: GatewayPorts) -> list[str]:
    """The same host and port, then the gateway's OTLP/HTTP port, at /v1/metrics."""
    parts = urlsplit(endpoint)
    urls = [
        f"{parts.scheme}://{parts.netloc}{METRICS_PATH}",
        f"{parts.scheme}://{parts.hostname}:{ports.http}{METRICS_PATH}",
    ]
    return list(dict.fromkeys(urls))


def _use_http(url: str, attempt: Attempt, environ: Mapping[str, str]) -> Step:
    """Advice to switch to OTLP/HTTP at `url`, in the variables that take effect."""
    protocol = (
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"
        if environ.get("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "").strip()
        else "OTEL_EXPORTER_OTLP_PROTOCOL"
    )
    if (
        url.endswith(METRICS_PATH)
        and not environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "").strip()
    ):
        endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", url.removesuffix(METRICS_PATH))
    else:
        endpoint = ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", url)
    return Step(
        "OTLP/HTTP export",
        True,
        f"a test point was accepted at {url}{attempt.landing}",
        "use OTLP/HTTP",
        settings=((protocol, "http/protobuf"), endpoint),
    )


def _http_export(
    config: AgentConfig, environ: Mapping[str, str], ports: GatewayPorts
) -> list[Step]:
    name = "OTLP/HTTP export"
    attempt = send_http(config.endpoint, config)
    if attempt.accepted:
        return [
            Step(
                name,
                True,
                f"a test point was accepted at {config.endpoint}{attempt.landing}",
                accepted=True,
            )
        ]
    if attempt.outcome == "key refused":
        return [Step(name, False, f"the gateway refused the key: {attempt.detail}", _KEY_FIX)]
    parts = urlsplit(config.endpoint)
    if parts.port != ports.http:
        # OTLP/HTTP sent to the gateway's gRPC port (or elsewhere): its HTTP port is the fix.
        url = parts._replace(netloc=f"{parts.hostname}:{ports.http}").geturl()
        on_http_port = send_http(url, config)
        if on_http_port.accepted:
            variable = _endpoint_variable(config)
            value = (
                url.removesuffix(METRICS_PATH) if variable == "OTEL_EXPORTER_OTLP_ENDPOINT" else url
            )
            return [
                Step(
                    name,
                    False,
                    f"the gateway did not take the test point at {config.endpoint} "
                    f"({attempt.detail})",
                    f"wrong port: the gateway takes OTLP/HTTP on port {ports.http}",
                    settings=((variable, value),),
                ),
                Step(
                    f"OTLP/HTTP export to port {ports.http}",
                    True,
                    f"a test point was accepted at {url}{on_http_port.landing}",
                ),
            ]
    fix = (
        f"the gateway takes OTLP/HTTP at {METRICS_PATH}: check the path in "
        f"{_endpoint_variable(config)}"
        if attempt.outcome == "not found"
        else "check the URL and any proxy; if this persists, tell the platform team"
    )
    return [Step(name, False, f"the gateway did not take the test point ({attempt.detail})", fix)]


def _endpoint_variable(config: AgentConfig) -> str:
    """The variable to change the endpoint with: the one in effect, else the generic one."""
    if config.endpoint_source.startswith("OTEL_EXPORTER_OTLP_"):
        return config.endpoint_source
    return "OTEL_EXPORTER_OTLP_ENDPOINT"


def _with_scheme(written: str, scheme: str) -> str:
    """`written` (a URL or a bare host:port) with `scheme`."""
    _, sep, rest = written.strip().partition("://")
    return f"{scheme}://{rest if sep else written.strip()}"


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
    check.add_argument("--http-url", help="the gateway's OTLP/HTTP URL to try if gRPC is blocked")
    check.add_argument(
        "--grpc-port", type=int, default=GRPC_PORT, help="the gateway's OTLP/gRPC port (4317)"
    )
    check.add_argument(
        "--http-port", type=int, default=HTTP_PORT, help="the gateway's OTLP/HTTP port (4318)"
    )
    args = parser.parse_args(argv)

    steps = run_checks(os.environ, args.http_url, GatewayPorts(args.grpc_port, args.http_port))
    for step in steps:
        mark = "FAIL" if not step.ok else "warn" if step.warning else "ok  "
        print(f"[{mark}] {step.name}: {step.detail}")
        if step.fix:
            print(f"       → {step.fix}")
        for variable, value in step.settings:
            print(f"         export {variable}={value}")
    accepted = any(step.accepted for step in steps)
    if accepted:
        print("\nResult: metrics can be sent.")
    elif any(step.settings for step in steps):
        print("\nResult: metrics cannot be sent yet; set what is shown above and check again.")
    else:
        print("\nResult: metrics cannot be sent yet.")
    return 0 if accepted else 1


if __name__ == "__main__":
    sys.exit(main())
