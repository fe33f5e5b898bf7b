"""`otel-gateway serve --workers N`: N processes on the same ports under one parent."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from gateway_fixtures import EXPORT, counter_request, free_port_now, make_tenants

from stack.redis_server import RedisServer

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[3]


def poll(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


def metrics(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
            return str(answer.read().decode())
    except OSError:
        return None


def two_free_ports() -> int:
    """A port p with p + 1 free too (worker i serves /metrics on p + i)."""
    for _ in range(50):
        port = free_port_now()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two consecutive free ports")


def gateway_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    make_tenants(tmp_path / "tenants.json", "acme")
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "GATEWAY_TENANTS_FILE": str(tmp_path / "tenants.json"),
        "GATEWAY_FLEET_STATE_FILE": str(tmp_path / "fleet.json"),
        "GATEWAY_GRPC_HOST": "127.0.0.1",
        "GATEWAY_HTTP_HOST": "127.0.0.1",
        "GATEWAY_COLLECTOR_ENDPOINT": f"127.0.0.1:{free_port_now()}",
        **extra,
    }


def test_more_than_one_worker_without_a_state_store_refuses_to_start(tmp_path: Path) -> None:
    env = gateway_env(tmp_path, GATEWAY_GRPC_PORT="4999", GATEWAY_HTTP_PORT="4998")
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "GATEWAY_WORKERS=2 needs GATEWAY_STATE_URL" in done.stderr


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_two_workers_share_the_ports_a_dead_one_comes_back_sigterm_drains_all(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    grpc_port, http_port, metrics_port = free_port_now(), free_port_now(), two_free_ports()
    env = gateway_env(
        tmp_path,
        GATEWAY_STATE_URL=redis_server.url,
        GATEWAY_GRPC_PORT=str(grpc_port),
        GATEWAY_HTTP_PORT=str(http_port),
        GATEWAY_METRICS_PORT=str(metrics_port),
        GATEWAY_WORKERS="2",
    )
    key = make_tenants(tmp_path / "tenants.json", "acme")["acme"]
    env["GATEWAY_TENANTS_FILE"] = str(tmp_path / "tenants.json")
    log = (tmp_path / "gateway.log").open("wb")
    parent = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve"], env=env, stdout=log, stderr=log
    )
    try:
        poll(lambda: all(metrics(metrics_port + i) for i in (0, 1)), "both workers' /metrics")
        first = children(parent.pid)
        assert len(first) == 2

        # New connections are spread over both workers by the kernel.
        body = counter_request().SerializeToString()
        for _ in range(20):
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                call = channel.unary_unary(EXPORT, request_serializer=None)
                # The Collector is not there (UNAVAILABLE): the request is counted all the same.
                with contextlib.suppress(grpc.RpcError):
                    call(body, metadata=(("authorization", f"Bearer {key}"),), timeout=10)
        for i in (0, 1):
            text = metrics(metrics_port + i) or ""
            counted = re.search(r'gateway_requests_total\{[^}]*tenant_id="acme"', text)
            assert counted, f"worker {i} served none of the 20 connections"

        # A worker killed is started again by the parent.
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        poll(
            lambda: len(children(parent.pid)) == 2 and victim not in children(parent.pid),
            "the killed worker's replacement",
        )
        poll(lambda: all(metrics(metrics_port + i) for i in (0, 1)), "both workers again")

        # SIGTERM drains them all and the parent exits 0.
        workers = children(parent.pid)
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=60) == 0
        for pid in workers:
            assert (
                not Path(f"/proc/{pid}").exists()
                or "zombie" in Path(f"/proc/{pid}/status").read_text()
            )
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        log.close()
