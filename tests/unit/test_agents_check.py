"""`otel-agents check` against real servers: what it tells the user in each situation."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_fixtures import fake_collector, free_port_now, make_tenants, running_gateway

from otel_agents.check import Step, main, run_checks


def _by_name(steps: list[Step]) -> dict[str, Step]:
    return {step.name: step for step in steps}


def _check_against_gateway(tmp_path: Path, key: str | None) -> list[Step]:
    keys = make_tenants(tmp_path / "tenants.json", "acme")

    async def scenario() -> list[Step]:
        async with (
            fake_collector() as (_, port),
            running_gateway(tmp_path / "tenants.json", port) as gw,
        ):
            target = f"127.0.0.1:{gw.port}"
            env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{target}"}
            env["OTEL_AGENTS_API_KEY"] = keys["acme"] if key == "valid" else (key or "")
            return await asyncio.to_thread(run_checks, env)

    return asyncio.run(scenario())


def test_a_valid_key_is_accepted(tmp_path: Path) -> None:
    steps = _by_name(_check_against_gateway(tmp_path, "valid"))
    assert all(step.ok for step in steps.values()), steps
    assert "accepted under tenant 'acme'" in steps["OTLP/gRPC export"].detail


def test_a_wrong_key_says_which_variable_to_fix(tmp_path: Path) -> None:
    steps = _by_name(_check_against_gateway(tmp_path, "oga_00000000_wrong"))
    export = steps["OTLP/gRPC export"]
    assert not export.ok
    assert "refused the key" in export.detail
    assert "OTEL_AGENTS_API_KEY" in export.fix


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


def test_tls_configured_against_a_plaintext_gateway(tmp_path: Path) -> None:
    make_tenants(tmp_path / "tenants.json", "acme")

    async def scenario() -> list[Step]:
        async with (
            fake_collector() as (_, port),
            running_gateway(tmp_path / "tenants.json", port) as gw,
        ):
            target = f"127.0.0.1:{gw.port}"
            env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"https://{target}"}
            return await asyncio.to_thread(run_checks, env)

    steps = asyncio.run(scenario())
    assert steps[-1].name == "TLS"
    assert not steps[-1].ok
    assert "http://" in steps[-1].fix


class _Http1Only(http.server.BaseHTTPRequestHandler):
    """A proxy that speaks HTTP/1.1 only: it accepts OTLP/HTTP but not gRPC."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("x-otel-tenant", "acme")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http1_proxy() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Http1Only)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_a_proxy_that_blocks_grpc_points_to_otlp_http(http1_proxy: int) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{http1_proxy}",
        "OTEL_AGENTS_API_KEY": "oga_12345678_secret",
    }
    url = f"http://127.0.0.1:{http1_proxy}/v1/metrics"
    steps = _by_name(run_checks(env, http_url=url))
    assert not steps["OTLP/gRPC export"].ok
    assert "proxy" in steps["OTLP/gRPC export"].fix
    fallback = steps["OTLP/HTTP export"]
    assert fallback.ok
    assert "'acme'" in fallback.detail
    assert "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf" in fallback.fix


def test_main_prints_each_step_and_exits_nonzero_when_nothing_was_accepted(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port_now()}")
    assert main(["check"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] connection" in out
    assert "metrics cannot be sent yet" in out


def test_a_bad_setting_is_reported_not_raised() -> None:
    steps = run_checks({"OTEL_EXPORTER_OTLP_COMPRESSION": "brotli"})
    assert [s.name for s in steps] == ["settings"]
    assert "OTEL_EXPORTER_OTLP_COMPRESSION" in steps[0].detail
