"""The demo connector against the demo upstream, in-process: every connector metric moves."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc
import pytest
from test_grpc_sync import Side, counts

from otel_agents.arrow import ipc_row_count
from otel_agents.certificate import CertificateFile
from otel_agents.grpc_instrumentation import ClientInterceptor
from scripts import demo_connector
from scripts.demo_upstream import PUT, Upstream, serve


@pytest.fixture
def upstream() -> Iterator[tuple[Upstream, int]]:
    handlers = Upstream(failure_rate=0.0)
    server, port = serve("127.0.0.1:0", handlers)
    yield handlers, port
    server.stop(None)


def connect(side: Side, port: int) -> grpc.Channel:
    interceptor = ClientInterceptor(side.metrics, records_of=ipc_row_count)
    return grpc.intercept_channel(grpc.insecure_channel(f"127.0.0.1:{port}"), interceptor)


def test_every_call_is_counted_with_the_rows_the_upstream_received(
    upstream: tuple[Upstream, int],
) -> None:
    handlers, port = upstream
    side = Side.create("demo")
    channel = connect(side, port)
    rng = random.Random(7)
    for _ in range(6):
        assert demo_connector.send_once(channel, rng) is None
    side.wait_ended(6)
    values = side.values()
    assert values["queries_processed"] == 6
    assert values["records_sent"] == handlers.rows > 0
    assert values["errors"] == {}
    channel.close()


def test_refused_calls_are_counted_as_unavailable(upstream: tuple[Upstream, int]) -> None:
    handlers, port = upstream
    handlers.failure_rate = 1.0
    side = Side.create("demo-refused")
    channel = connect(side, port)
    assert demo_connector.send_once(channel, random.Random(1)) == "UNAVAILABLE"
    payload = demo_connector.ipc_payload(demo_connector.record_batch(random.Random(2)))
    with pytest.raises(grpc.RpcError):
        channel.unary_unary(PUT, None, None)(payload, timeout=5)
    side.wait_ended(2)
    assert side.values()["errors"] == {"unavailable": 2}
    assert handlers.rows == 0
    channel.close()


def test_an_invalid_payload_is_refused_by_the_upstream(upstream: tuple[Upstream, int]) -> None:
    _, port = upstream
    side = Side.create("demo-invalid")
    channel = connect(side, port)
    with pytest.raises(grpc.RpcError) as refused:
        channel.unary_unary(PUT, None, None)(b"not arrow", timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert side.values() == counts(1, 9, 0, INVALID_ARGUMENT=1)
    channel.close()


def test_the_generated_certificate_is_valid_for_thirty_days(tmp_path: Path) -> None:
    path = demo_connector.make_certificate(tmp_path)
    days = CertificateFile(path).days_left()
    assert days == pytest.approx(30, abs=0.01)


def test_demo_cert_file_overrides_the_generated_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(demo_connector.CERT_ENV, "/etc/connector/cert.pem")
    assert demo_connector.certificate_path(tmp_path) == Path("/etc/connector/cert.pem")
    assert list(tmp_path.iterdir()) == []


class SignallingUpstream(Upstream):
    """Sets `received` when the first rows arrive."""

    def __init__(self) -> None:
        super().__init__(failure_rate=0.0)
        self.received = threading.Event()

    def upload(self, payloads: Iterable[bytes], context: grpc.ServicerContext) -> bytes:
        answer = super().upload(payloads, context)
        self.received.set()
        return answer

    def put(self, payload: bytes, context: grpc.ServicerContext) -> bytes:
        answer = super().put(payload, context)
        self.received.set()
        return answer


def test_main_sends_until_sigterm_then_exits_cleanly(tmp_path: Path) -> None:
    handlers = SignallingUpstream()
    server, port = serve("127.0.0.1:0", handlers)
    env = {
        **os.environ,
        "DEMO_UPSTREAM_ADDRESS": f"127.0.0.1:{port}",
        "OTEL_SDK_DISABLED": "true",  # no gateway here; the export path is tested elsewhere
        "OTEL_SERVICE_NAME": "demo-connector-test",
    }
    connector = subprocess.Popen(
        [sys.executable, "-m", "scripts.demo_connector"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert handlers.received.wait(30), "the demo connector sent nothing"
        connector.send_signal(signal.SIGTERM)
        output, _ = connector.communicate(timeout=15)
    finally:
        if connector.poll() is None:
            connector.kill()
            connector.wait()
        server.stop(None)
    assert connector.returncode == 0, output.decode()
    assert handlers.rows > 0
