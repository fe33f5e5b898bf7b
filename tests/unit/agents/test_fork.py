"""Forked children of an agent: counts from zero, an id of their own, a final export.

Real forks (os.fork and a multiprocessing 'fork' child) in an agent process that
exports to a real gateway: the sum over instances must be what was counted, once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from live_gateway import LiveGateway
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as service_grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from otlp_receiver import OtlpReceiver, otlp_receiver

from otel_agents.identity import machine_key, slot_instance_id

pytestmark = pytest.mark.slow

AGENT = Path(__file__).with_name("fork_agent.py")
REPO = Path(__file__).resolve().parents[3]


def run_agent(gateway: LiveGateway, tmp_path: Path, **extra: str) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        "PYTHONPATH": str(REPO),
        "XDG_RUNTIME_DIR": str(tmp_path),
        "OTEL_EXPORTER_OTLP_ENDPOINT": gateway.grpc_endpoint,
        "OTEL_AGENTS_API_KEY": gateway.keys["acme"],
        "OTEL_METRIC_EXPORT_INTERVAL": "600000",  # only the final exports
        **extra,
    }
    done = subprocess.run(
        [sys.executable, str(AGENT)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def queries_by_instance(gateway: LiveGateway) -> dict[str, list[int]]:
    """Every exported value of connector.queries_processed, by service.instance.id."""
    found: dict[str, list[int]] = {}
    for request in list(gateway.collector.received):
        for resource in request.resource_metrics:
            attributes = {kv.key: kv.value.string_value for kv in resource.resource.attributes}
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == "connector.queries_processed":
                        values = [p.as_int for p in metric.sum.data_points]
                        found.setdefault(attributes["service.instance.id"], []).extend(values)
    return found


def test_children_count_from_zero_under_their_own_ids(gateway: LiveGateway, tmp_path: Path) -> None:
    run_agent(gateway, tmp_path)
    found = queries_by_instance(gateway)
    parent = slot_instance_id(machine_key(), "fork-demo", 0)
    # The parent holds slot 0; each child takes the lowest free slot while it runs (the
    # os.fork child has ended, and freed slot 1, when the multiprocessing one starts).
    child = slot_instance_id(machine_key(), "fork-demo", 1)
    assert found == {parent: [1000], child: [99, 7]}
    assert not list(tmp_path.glob("otel-agents-*/*.lock")), "lock files left behind"


def test_an_explicit_instance_id_is_kept_in_children(gateway: LiveGateway, tmp_path: Path) -> None:
    run_agent(gateway, tmp_path, OTEL_RESOURCE_ATTRIBUTES="service.instance.id=worker-7")
    found = queries_by_instance(gateway)
    assert list(found) == ["worker-7"]
    assert sorted(found["worker-7"]) == [7, 99, 1000]


# Counts 1,000; on "fork" from stdin forks from a thread (as a pool would), and the
# child counts 5 and sends its final export, printing whether it arrived.
FORK_DURING_EXPORT = textwrap.dedent(
    """
    import os, sys, threading, time
    from otel_agents import connector_metrics, setup_metrics
    telemetry = setup_metrics("fork-during-export", "connector")
    metrics = connector_metrics(telemetry)
    for _ in range(1000):
        metrics.record_query()
    print("ready", flush=True)
    sys.stdin.readline()
    def fork():
        if os.fork() == 0:
            for _ in range(5):
                metrics.record_query()
            started = time.monotonic()
            arrived = telemetry.shutdown()
            print(arrived, round(time.monotonic() - started, 1), flush=True)
            os._exit(0)
    worker = threading.Thread(target=fork)
    worker.start()
    worker.join()
    os.wait()
    """
)


class HeldReceiver(OtlpReceiver):
    """Holds the first export until released: the agent forks while it is in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.first_started = threading.Event()
        self.release = threading.Event()

    def Export(
        self, request: ExportMetricsServiceRequest, context: grpc.ServicerContext
    ) -> ExportMetricsServiceResponse:
        if not self.first_started.is_set():
            self.first_started.set()
            self.release.wait(30)
        return super().Export(request, context)


def test_a_fork_during_an_export_still_sends_the_childs_final_export(tmp_path: Path) -> None:
    receiver = HeldReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(4), options=[("grpc.so_reuseport", 0)])
    service_grpc.add_MetricsServiceServicer_to_server(receiver, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        "PYTHONPATH": str(REPO),
        "XDG_RUNTIME_DIR": str(tmp_path),
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_AGENTS_API_KEY": "test-key",
        "OTEL_METRIC_EXPORT_INTERVAL": "200",
        "OTEL_AGENTS_SHUTDOWN_TIMEOUT": "5",
    }
    agent = subprocess.Popen(
        [sys.executable, "-c", FORK_DURING_EXPORT],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert agent.stdin is not None
        assert agent.stdout is not None
        assert agent.stdout.readline().strip() == "ready"
        assert receiver.first_started.wait(30), "no export started"
        agent.stdin.write("fork\n")
        agent.stdin.flush()
        child = agent.stdout.readline().split()  # while the parent's export is held
        receiver.release.set()
        agent.stdin.close()
        agent.wait(30)
        agent.stdout.close()
    finally:
        receiver.release.set()
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        server.stop(None)
    assert child[0] == "True"  # before: False after the whole 4.5 s (the SDK's export
    assert float(child[1]) < 4.0  # lock, held by the parent's export thread, never freed)
    assert 5 in [value for _, value in receiver.latest("connector.queries_processed").items()]


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_a_multiprocessing_child_that_sets_up_metrics_sends_its_final_export(
    tmp_path: Path, method: str
) -> None:
    """Before: fork and forkserver children (os._exit, no atexit) exported nothing."""
    with otlp_receiver() as (receiver, endpoint):
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
            "PYTHONPATH": str(REPO),
            "XDG_RUNTIME_DIR": str(tmp_path),
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_AGENTS_API_KEY": "test-key",
            "OTEL_METRIC_EXPORT_INTERVAL": "600000",  # only the final exports
        }
        done = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("mp_child_agent.py")), method],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        exported = sorted(
            point.as_int
            for request in receiver.requests
            for resource in request.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == "connector.queries_processed"
            for point in metric.sum.data_points
        )
    # One final export per child (a child that ended first may free its slot, and so
    # its instance id, for a later one: ids are not compared here).
    assert exported == [1, 2, 3]
    assert not list(tmp_path.glob("otel-agents-*/*.lock")), "lock files left behind"
