"""`otel-agents check` against real servers: what it tells the user in each situation, and
that following its advice makes an agent's metrics arrive."""

from __future__ import annotations

import http.client
import http.server
import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_fixtures import free_port_now
from live_gateway import LiveGateway, live_gateway

from otel_agents import connector_metrics, setup_metrics
from otel_agents.check import GatewayPorts, Step, main, run_checks
from stack.pki import Pki

_sent = itertools.count(1)


def _by_name(steps: list[Step]) -> dict[str, Step]:
    return {step.name: step for step in steps}


def _ports(gateway: LiveGateway) -> GatewayPorts:
    return GatewayPorts(grpc=gateway.grpc_port, http=gateway.http_port)


def _follow(environ: dict[str, str], steps: list[Step]) -> dict[str, str]:
    """The environment with every setting the check advised."""
    advised = dict(environ)
    for step in steps:
        advised.update(step.settings)
    return advised


def _agent_metrics_arrive(environ: dict[str, str], gateway: LiveGateway, tenant: str) -> None:
    """An agent started with `environ` gets its counts to the gateway under `tenant`."""
    nbytes = next(_sent)
    telemetry = setup_metrics("checked-agent", "connector", environ=environ, set_global=False)
    assert telemetry.enabled
    connector_metrics(telemetry).record_batch(1, nbytes)
    assert telemetry.force_flush(10)
    assert gateway.latest("connector.bytes_sent") == {tenant: nbytes}
    assert telemetry.shutdown(timeout_s=5)


def _accepted(steps: list[Step]) -> bool:
    return any(step.accepted for step in steps)


def test_a_valid_key_is_accepted(gateway: LiveGateway) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": gateway.grpc_endpoint,
        "OTEL_AGENTS_API_KEY": gateway.keys["acme"],
    }
    steps = _by_name(run_checks(env, ports=_ports(gateway)))
    assert all(step.ok and not step.warning for step in steps.values()), steps
    assert "accepted under tenant 'acme'" in steps["OTLP/gRPC export"].detail
    assert steps["OTLP/gRPC export"].accepted


def test_no_api_key_is_a_warning_and_the_fix_works(
    gateway: LiveGateway, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", gateway.grpc_endpoint)
    assert main(["check"]) == 1
    out = capsys.readouterr().out
    assert "[warn] settings: OTLP/gRPC to" in out
    assert "NO API key is set" in out
    assert "[ok  ] settings" not in out
    assert "→ set OTEL_AGENTS_API_KEY" in out

    monkeypatch.setenv("OTEL_AGENTS_API_KEY", gateway.keys["acme"])
    assert main(["check"]) == 0
    assert "[warn]" not in capsys.readouterr().out


def test_a_wrong_key_says_which_variable_to_fix(gateway: LiveGateway) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": gateway.grpc_endpoint,
        "OTEL_AGENTS_API_KEY": "oga_00000000_wrong",
    }
    export = _by_name(run_checks(env))["OTLP/gRPC export"]
    assert not export.ok
    assert "refused the key" in export.detail
    assert "OTEL_AGENTS_API_KEY" in export.fix


def test_grpc_sent_to_the_http_port_is_a_wrong_port_and_the_fix_works(
    gateway: LiveGateway,
) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": gateway.http_base,
        "OTEL_AGENTS_API_KEY": gateway.keys["acme"],
    }
    steps = run_checks(env, ports=_ports(gateway))
    export = _by_name(steps)["OTLP/gRPC export"]
    assert not export.ok
    assert "wrong port" in export.fix
    assert "proxy" not in export.detail + export.fix
    assert export.settings == (("OTEL_EXPORTER_OTLP_ENDPOINT", gateway.grpc_endpoint),)
    assert not _accepted(steps)

    advised = _follow(env, steps)
    assert _accepted(run_checks(advised, ports=_ports(gateway)))
    _agent_metrics_arrive(advised, gateway, "acme")


class _Http1Proxy(http.server.BaseHTTPRequestHandler):
    """A reverse proxy that speaks HTTP/1.1 only, in front of the gateway's HTTP port.

    It answers gRPC's HTTP/2 preface with 505, as HTTP/1.1-only proxies do.
    """

    upstream_port = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        forwarded = {
            k: v
            for k, v in self.headers.items()
            if k.lower() in ("authorization", "content-type", "content-encoding")
        }
        upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=10)
        try:
            upstream.request("POST", self.path, body=body, headers=forwarded)
            answer = upstream.getresponse()
            payload = answer.read()
            self.send_response(answer.status)
            for key in ("content-type", "x-otel-tenant"):
                if answer.getheader(key):
                    self.send_header(key, answer.getheader(key, ""))
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        finally:
            upstream.close()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http1_proxy(gateway: LiveGateway) -> Iterator[int]:
    handler = type("Proxy", (_Http1Proxy,), {"upstream_port": gateway.http_port})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "variables",
    [
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:{proxy}"},
        # Signal-specific variables in effect: the advice must name those.
        {
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://127.0.0.1:{proxy}",
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc",
        },
    ],
)
def test_an_http_only_proxy_gets_otlp_http_advice_that_works(
    gateway: LiveGateway, http1_proxy: int, variables: dict[str, str]
) -> None:
    env = {name: value.format(proxy=http1_proxy) for name, value in variables.items()}
    env["OTEL_AGENTS_API_KEY"] = gateway.keys["globex"]
    steps = run_checks(env, ports=_ports(gateway))
    by_name = _by_name(steps)
    assert not by_name["OTLP/gRPC export"].ok
    assert "HTTP/1.1, not gRPC" in by_name["OTLP/gRPC export"].detail
    fallback = by_name["OTLP/HTTP export"]
    assert fallback.ok
    assert f"127.0.0.1:{http1_proxy}/v1/metrics under tenant 'globex'" in fallback.detail
    assert dict(fallback.settings)[
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"
        if "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL" in variables
        else "OTEL_EXPORTER_OTLP_PROTOCOL"
    ] == ("http/protobuf")
    assert not _accepted(steps)

    advised = _follow(env, steps)
    assert _accepted(run_checks(advised, ports=_ports(gateway)))
    _agent_metrics_arrive(advised, gateway, "globex")


def test_otlp_http_sent_to_the_grpc_port_is_a_wrong_port_and_the_fix_works(
    gateway: LiveGateway,
) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": gateway.grpc_endpoint,
        "OTEL_AGENTS_API_KEY": gateway.keys["acme"],
    }
    steps = run_checks(env, ports=_ports(gateway))
    export = _by_name(steps)["OTLP/HTTP export"]
    assert not export.ok
    assert "wrong port" in export.fix
    assert export.settings == (("OTEL_EXPORTER_OTLP_ENDPOINT", gateway.http_base),)

    advised = _follow(env, steps)
    assert _accepted(run_checks(advised, ports=_ports(gateway)))
    _agent_metrics_arrive(advised, gateway, "acme")


@pytest.mark.parametrize(
    "variable", ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"]
)
def test_with_protocol_http_the_check_sends_otlp_http(gateway: LiveGateway, variable: str) -> None:
    url = gateway.http_base + ("/v1/metrics" if "METRICS" in variable else "")
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        variable: url,
        "OTEL_AGENTS_API_KEY": gateway.keys["acme"],
    }
    steps = run_checks(env, ports=_ports(gateway))
    assert [step.name for step in steps] == [
        "settings",
        "name resolution",
        "connection",
        "TLS",
        "OTLP/HTTP export",
    ]
    assert all(step.ok for step in steps), steps
    assert f"accepted at {gateway.http_base}/v1/metrics under tenant 'acme'" in steps[-1].detail
    assert steps[0].detail.startswith("OTLP/HTTP to")


@pytest.mark.parametrize(
    ("protocol", "written"),
    [
        ("grpc", "https://127.0.0.1:{port}"),
        ("grpc", "127.0.0.1:{port}"),  # no scheme: TLS, as the specification says
        ("http/protobuf", "https://127.0.0.1:{port}"),
    ],
)
def test_tls_configured_against_a_plaintext_gateway_and_the_fix_works(
    gateway: LiveGateway, protocol: str, written: str
) -> None:
    port = gateway.grpc_port if protocol == "grpc" else gateway.http_port
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_ENDPOINT": written.format(port=port),
        "OTEL_AGENTS_API_KEY": gateway.keys["acme"],
    }
    steps = run_checks(env, ports=_ports(gateway))
    assert steps[-1].name == "TLS"
    assert not steps[-1].ok
    assert steps[-1].settings == (("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}"),)

    advised = _follow(env, steps)
    assert _accepted(run_checks(advised, ports=_ports(gateway)))
    _agent_metrics_arrive(advised, gateway, "acme")


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_plaintext_configured_against_a_tls_gateway_and_the_fixes_work(
    tmp_path: Path, pki: Pki, protocol: str
) -> None:
    ca, server = pki.ca, pki.server
    with live_gateway(tmp_path, tls_cert_file=server.cert, tls_key_file=server.key) as tls:
        port = tls.grpc_port if protocol == "grpc" else tls.http_port
        env = {
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_AGENTS_API_KEY": tls.keys["acme"],
        }
        steps = run_checks(env, ports=_ports(tls))
        assert (steps[-1].name, steps[-1].ok) == ("TLS", False)
        advised = _follow(env, steps)
        assert advised["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"https://127.0.0.1:{port}"

        # Now TLS, with a certificate from a CA this machine does not trust: the next advice.
        steps = run_checks(advised, ports=_ports(tls))
        assert (steps[-1].name, steps[-1].ok) == ("TLS", False)
        assert "not trusted" in steps[-1].detail
        assert "OTEL_EXPORTER_OTLP_CERTIFICATE" in steps[-1].fix
        advised["OTEL_EXPORTER_OTLP_CERTIFICATE"] = str(ca.cert_file)

        assert _accepted(run_checks(advised, ports=_ports(tls)))
        _agent_metrics_arrive(advised, tls, "acme")


def test_a_name_that_does_not_resolve() -> None:
    steps = run_checks({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://gateway.invalid:4317"})
    assert [s.name for s in steps] == ["settings", "name resolution"]
    assert not steps[-1].ok
    assert "does not resolve" in steps[-1].detail


def test_a_closed_port() -> None:
    port = free_port_now()
    steps = run_checks({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"})
    assert not steps[-1].ok
    assert steps[-1].name == "connection"
    assert str(port) in steps[-1].fix


def test_main_prints_each_step_and_exits_nonzero_when_nothing_was_accepted(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port_now()}")
    assert main(["check"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] connection" in out
    assert "metrics cannot be sent yet" in out


def test_main_prints_the_settings_to_export(
    gateway: LiveGateway, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", gateway.http_base)
    monkeypatch.setenv("OTEL_AGENTS_API_KEY", gateway.keys["acme"])
    ports = ["--grpc-port", str(gateway.grpc_port), "--http-port", str(gateway.http_port)]
    assert main(["check", *ports]) == 1
    out = capsys.readouterr().out
    assert f"         export OTEL_EXPORTER_OTLP_ENDPOINT={gateway.grpc_endpoint}\n" in out


def test_unusable_settings_are_warnings_and_a_bad_endpoint_a_failure() -> None:
    steps = run_checks(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port_now()}",
            "OTEL_EXPORTER_OTLP_COMPRESSION": "brotli",
        }
    )
    warned = [step for step in steps if step.warning]
    assert any("OTEL_EXPORTER_OTLP_COMPRESSION" in step.detail for step in warned)
    failed = run_checks({"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://gw:21"})
    assert [(s.name, s.ok) for s in failed] == [("settings", False)]
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in failed[0].detail
