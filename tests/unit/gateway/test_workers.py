"""`otel-gateway serve --workers N`: N processes on the same ports under one parent."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import redis
from gateway_fixtures import EXPORT, counter_request, free_port_now, make_tenants
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

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


def alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "zombie" not in status.read_text()
    except FileNotFoundError:
        return False


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
    ports = {"GATEWAY_GRPC_PORT": str(free_port_now()), "GATEWAY_HTTP_PORT": str(free_port_now())}
    env = gateway_env(tmp_path, **ports)
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
        # ... under its predecessor's name: the store counts two processes, not three.
        store = redis.Redis.from_url(redis_server.url)
        assert store.zcard("otelgw:replicas") == 2

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


class CountingCollector:
    """A Collector stand-in in this process: counts the data points forwarded to it."""

    def __init__(self) -> None:
        self.points = 0
        self.lock = threading.Lock()
        self.server = grpc.server(ThreadPoolExecutor(max_workers=4))
        handler = grpc.unary_unary_rpc_method_handler(
            self.export,
            request_deserializer=ExportMetricsServiceRequest.FromString,
            response_serializer=ExportMetricsServiceResponse.SerializeToString,
        )
        service, method = EXPORT.strip("/").split("/")
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {method: handler}),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def export(self, request: ExportMetricsServiceRequest, context: object) -> object:
        points = sum(
            len(m.sum.data_points)
            for rm in request.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
        )
        with self.lock:
            self.points += points
        return ExportMetricsServiceResponse()


def fleet_of(http_port: int, key: str) -> dict[str, object]:
    """/api/fleet with a tenant's key, waiting as told when its reads are rate limited."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{http_port}/api/fleet", headers={"authorization": f"Bearer {key}"}
    )
    for _ in range(10):
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 (http only)
                return dict(json.loads(answer.read()))
        except urllib.error.HTTPError as exc:
            if exc.code != 429:
                raise
            time.sleep(float(exc.headers.get("Retry-After", "1")))
    raise AssertionError("/api/fleet answered 429 ten times in a row")


def test_exports_through_two_workers_lose_nothing_while_the_store_pauses_dies_and_empties(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    collector = CountingCollector()
    collector.server.start()
    grpc_port, http_port, metrics_port = free_port_now(), free_port_now(), two_free_ports()
    env = gateway_env(
        tmp_path,
        GATEWAY_STATE_URL=redis_server.url,
        GATEWAY_STATE_TIMEOUT_SECONDS="0.5",
        GATEWAY_GRPC_PORT=str(grpc_port),
        GATEWAY_HTTP_PORT=str(http_port),
        GATEWAY_METRICS_PORT=str(metrics_port),
        GATEWAY_COLLECTOR_ENDPOINT=f"127.0.0.1:{collector.port}",
        GATEWAY_RATE_LIMIT_REQUESTS_PER_SECOND="1000",
        GATEWAY_WORKERS="2",
    )
    key = make_tenants(tmp_path / "tenants.json", "acme")["acme"]
    log = (tmp_path / "gateway.log").open("wb")
    parent = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve"], env=env, stdout=log, stderr=log
    )
    sent, failures, stop = [0], [], threading.Event()

    def agent(index: int) -> None:
        resource = {"service.name": "billing", "service.instance.id": f"c-{index}"}
        body = counter_request(resource_attributes=resource).SerializeToString()
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            call = channel.unary_unary(EXPORT, request_serializer=None)
            while not stop.is_set():
                try:
                    call(body, metadata=(("authorization", f"Bearer {key}"),), timeout=10)
                    sent[0] += 1
                except grpc.RpcError as exc:
                    failures.append(exc.code())
                stop.wait(0.1)

    agents = [threading.Thread(target=agent, args=(i,)) for i in range(4)]
    try:
        poll(lambda: all(metrics(metrics_port + i) for i in (0, 1)), "both workers' /metrics")
        for thread in agents:
            thread.start()
        poll(lambda: sent[0] >= 40, "exports flowing")

        redis_server.pause()
        try:
            poll(lambda: fleet_of(http_port, key)["state_store"]["partial"], "a partial view")
            before = sent[0]
            time.sleep(10)  # the store stopped for a while, under load
            assert sent[0] - before >= 40, "exports stalled while the store was stopped"
        finally:
            redis_server.resume()
        redis_server.stop()
        time.sleep(2)  # ... and dead
        redis_server.start()  # ... and back, empty

        def whole_again() -> bool:
            answers = [fleet_of(http_port, key) for _ in range(6)]  # both workers, likely
            return all(
                not a["state_store"]["partial"]
                and {r["status"] for t in a["tenants"] for r in t["agents"]} == {"up"}
                and sum(len(t["agents"]) for t in a["tenants"]) == 4
                for a in answers
            )

        poll(whole_again, "every worker's view whole again, four agents up")
    finally:
        stop.set()
        for thread in agents:
            if thread.is_alive():
                thread.join(timeout=30)
        if parent.poll() is None:
            parent.send_signal(signal.SIGTERM)
            parent.wait(timeout=60)
        log.close()
        collector.server.stop(None)
    assert failures == []
    assert collector.points == sent[0]


def test_ctrl_c_drains_each_worker_once_and_a_killed_parent_takes_its_workers_along(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    metrics_port = two_free_ports()
    env = gateway_env(
        tmp_path,
        GATEWAY_STATE_URL=redis_server.url,
        GATEWAY_GRPC_PORT=str(free_port_now()),
        GATEWAY_HTTP_PORT=str(free_port_now()),
        GATEWAY_METRICS_PORT=str(metrics_port),
        GATEWAY_WORKERS="2",
    )
    argv = [sys.executable, "-m", "gateway.cli", "serve"]
    for ending in ("ctrl-c", "kill"):
        log_path = tmp_path / f"{ending}.log"
        with log_path.open("wb") as log:
            # A session of its own, as a terminal's foreground job: Ctrl-C is SIGINT
            # to the whole group.
            parent = subprocess.Popen(argv, env=env, stdout=log, stderr=log, start_new_session=True)
            try:
                poll(lambda: all(metrics(metrics_port + i) for i in (0, 1)), "both workers")
                workers = children(parent.pid)
                if ending == "ctrl-c":
                    os.killpg(parent.pid, signal.SIGINT)
                    assert parent.wait(timeout=60) == 0
                else:
                    parent.kill()
                    parent.wait()

                poll(lambda pids=workers: not any(map(alive, pids)), f"no worker after {ending}")
            finally:
                if parent.poll() is None:
                    parent.kill()
                    parent.wait()
        text = log_path.read_text()
        if ending == "ctrl-c":
            assert text.count("gateway stopped") == 2, text
