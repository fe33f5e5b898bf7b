"""Agent identity with real processes against the real stack: containers that share a
machine id are agents of their own, two processes under one id raise
AgentIdentityClash (also when each sends to its own gateway replica), a restart does
not.

Connectors are bench/fleet_agent.py processes (otel_agents, a batch every 0.5 s);
"containers" are processes in their own UTS and mount namespaces (`unshare`, as root:
their own host name and temporary directory, the host's /etc/machine-id). The stack is
the Collector, the gateway and Prometheus with the repository's rules (10 s scrapes and
evaluations); ConnectorSilent waits for the rules' 120 s threshold. The replicas'
case has a stack of its own: two gateways sharing a redis-server (GATEWAY_STATE_URL),
both scraped by Prometheus.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from needs import require
from polling import poll

from gateway import tenants
from stack.local import (
    REPO,
    LocalStack,
    Ports,
    Process,
    StackError,
    collector_binary,
    http_get,
    prometheus_binary,
)
from stack.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

TENANT = "ident"
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="new UTS and mount namespaces need root and unshare(1)",
)


@dataclass
class Stack:
    """The running stack and the tenant's key."""

    local: LocalStack
    key: str

    def agent(
        self, name: str, service: str, interval_s: float, *, host: str = "", **env: str
    ) -> Process:
        """A connector; with `host`, in namespaces of its own under that host name."""
        argv = [sys.executable, "-m", "bench.fleet_agent", "connector"]
        if host:
            inner = f"exec env -u XDG_RUNTIME_DIR {shlex.join(argv)}"
            script = f"hostname {host} && export TMPDIR=$(mktemp -d) && {inner}"
            argv = ["unshare", "--uts", "--mount", "sh", "-c", script]
        (self.local.run_dir / "locks").mkdir(mode=0o700, exist_ok=True)
        variables = {
            "PYTHONPATH": str(REPO),
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.local.gateway_grpc_endpoint,
            "OTEL_AGENTS_API_KEY": self.key,
            "OTEL_METRIC_EXPORT_INTERVAL": str(int(interval_s * 1000)),
            "OTEL_SERVICE_NAME": service,
            "XDG_RUNTIME_DIR": str(self.local.run_dir / "locks"),
            **env,
        }
        return self.local.start_process(name, argv, variables)

    def fleet(self, service: str, gateway: LocalStack | None = None) -> list[dict[str, Any]]:
        """The service's rows on /api/fleet (of `gateway`'s gateway, default the stack's)."""
        request = urllib.request.Request(  # noqa: S310 (the stack's loopback address)
            f"{(gateway or self.local).gateway_http_url}/api/fleet",
            headers={"authorization": f"Bearer {self.key}"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (loopback)
            document = json.loads(response.read())
        return [a for t in document["tenants"] for a in t["agents"] if a["service"] == service]

    def alerts(self, name: str, service: str) -> list[dict[str, Any]]:
        """The firing alerts `name` of `service` in Prometheus."""
        promql = f'ALERTS{{alertname="{name}", alertstate="firing", service="{service}"}}'
        return self.local.query(promql)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("identity")
    tenants_file = run_dir / "tenants.json"
    table, key = tenants.add_key(tenants.TenantTable(), TENANT)
    tenants.save(tenants_file, table)
    local = LocalStack(run_dir / "stack", tenants_file=tenants_file)
    try:
        binaries = (collector_binary(), prometheus_binary())
        local.wait_ready(local.start_collector(binaries[0]))
        for process in (local.start_gateway(), local.start_prometheus(binaries[1])):
            local.wait_ready(process)
        yield Stack(local, key)
    except StackError as exc:
        if "not installed" in str(exc) or "building" in str(exc):
            require("the stack", exc)
        raise
    finally:
        local.stop_all()


def _instance(process: Process, timeout: float = 30.0) -> str:
    """The id the agent announced (its first line)."""

    def announced() -> str:
        for line in process.log.read_text(errors="replace").splitlines():
            if line.startswith('{"instance"'):
                return str(json.loads(line)["instance"])
        return ""

    return poll(
        lambda: f"{process.name} to announce its id: {process.log_tail()}", announced, timeout
    )


@needs_root
def test_containers_sharing_the_machine_id_are_agents_of_their_own_and_a_kill_pages(
    stack: Stack,
) -> None:
    service = "orders-connector"
    pods = [stack.agent(f"pod-{h}", service, 5.0, host=f"orders-7d9f-{h}") for h in "ab"]
    ids = [_instance(pod) for pod in pods]
    assert ids[0] != ids[1]
    series = f'connector_records_sent_total{{tenant_id="{TENANT}", job="{service}"}}'
    # Each process's series sampled at least 4 times (after 3 scrapes, 30 s).
    stack.local.wait_for(f"count_over_time({series}[40s]) >= 4", lambda r: len(r) == 2, 120)
    # One series per process, each only ever growing: none holds the other's counts.
    resets = stack.local.query(f"resets({series}[40s])")
    assert {r["metric"]["instance"]: float(r["value"][1]) for r in resets} == {
        ids[0]: 0.0,
        ids[1]: 0.0,
    }
    rows = {row["instance"]: row for row in stack.fleet(service)}
    assert {i: (rows[i]["host"], rows[i]["status"], rows[i]["clash"]) for i in ids} == {
        ids[0]: ("orders-7d9f-a", "up", False),
        ids[1]: ("orders-7d9f-b", "up", False),
    }

    killed = time.monotonic()
    os.kill(pods[1].popen.pid, signal.SIGKILL)
    paged = poll(
        f"ConnectorSilent for {ids[1]}",
        lambda: stack.alerts("ConnectorSilent", service),
        timeout=190,
        every=1.0,
    )
    print(f"\n[identity] ConnectorSilent {time.monotonic() - killed:.0f} s after the SIGKILL")
    assert [a["metric"]["instance"] for a in paged] == [ids[1]]
    assert stack.alerts("AgentIdentityClash", service) == []
    for pod in pods:
        stack.local.stop(pod)


def test_a_shared_service_instance_id_raises_the_clash_within_two_export_intervals(
    stack: Stack,
) -> None:
    service, interval = "shared-connector", 15.0
    shared = {"OTEL_RESOURCE_ATTRIBUTES": "service.instance.id=orders-shared"}
    first = stack.agent("shared-1", service, interval, **shared)
    poll("the first process in the fleet", lambda: stack.fleet(service), 60)
    started = time.monotonic()
    second = stack.agent("shared-2", service, interval, **shared)
    marked = poll(
        "the clash on /api/fleet",
        lambda: [row for row in stack.fleet(service) if row["clash"]],
        timeout=4 * interval,
    )
    in_fleet = time.monotonic() - started
    alerts = poll(
        "AgentIdentityClash in Prometheus",
        lambda: stack.alerts("AgentIdentityClash", service),
        timeout=4 * interval,
    )
    firing = time.monotonic() - started
    print(
        f"\n[identity] clash ({interval:.0f} s exports) on /api/fleet {in_fleet:.0f} s, "
        f"AgentIdentityClash firing {firing:.0f} s after the second process started"
    )
    assert (marked[0]["instance"], marked[0]["status"]) == ("orders-shared", "up")
    labels = alerts[0]["metric"]
    assert (labels["instance"], labels["tenant_id"], labels["severity"]) == (
        "orders-shared",
        TENANT,
        "warning",
    )
    assert labels["hosts"] == os.uname().nodename
    # Its first export comes one interval after its start; two more at most.
    assert firing <= 3 * interval + 10, firing
    for process in (first, second):
        stack.local.stop(process)


def test_a_plain_restart_is_not_a_clash(stack: Stack) -> None:
    service, interval = "restarted-connector", 5.0
    agent = stack.agent("restarted", service, interval)
    instance = _instance(agent)
    poll("the agent in the fleet", lambda: stack.fleet(service), 60)
    os.kill(agent.popen.pid, signal.SIGKILL)
    agent.popen.wait()
    stack.local.restart(agent)
    first_seen = stack.fleet(service)[0]["last_seen"]
    poll(
        "the restarted agent's export",
        lambda: stack.fleet(service)[0]["last_seen"] != first_seen,
        30,
    )
    # Four export intervals and two of Prometheus's evaluations on: still one agent, no clash.
    deadline = time.monotonic() + 4 * interval + 20
    while time.monotonic() < deadline:
        rows = stack.fleet(service)
        assert [(r["instance"], r["clash"]) for r in rows] == [(instance, False)]
        time.sleep(1.0)
    assert stack.alerts("AgentIdentityClash", service) == []
    stack.local.stop(agent)


@dataclass
class Replicated:
    """A stack whose gateway has a replica (`other`: its ports, the same Collector)
    sharing the fleet through `redis`."""

    stack: Stack
    other: LocalStack
    redis: RedisServer


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicated]:
    run_dir = tmp_path_factory.mktemp("identity-replicas")
    tenants_file = run_dir / "tenants.json"
    table, key = tenants.add_key(tenants.TenantTable(), TENANT)
    tenants.save(tenants_file, table)
    redis = RedisServer(run_dir / "redis")
    local = LocalStack(run_dir / "stack", tenants_file=tenants_file)
    other = LocalStack(
        run_dir / "other",
        tenants_file=tenants_file,
        ports=Ports(collector_otlp=local.ports.collector_otlp),
    )
    shared = {"GATEWAY_STATE_URL": redis.url}
    try:
        try:
            redis.start()
        except RuntimeError as exc:
            require("redis-server", exc)
        binaries = (collector_binary(), prometheus_binary())
        local.wait_ready(local.start_collector(binaries[0]))
        gateways = [stack.start_gateway(shared) for stack in (local, other)]
        scraped = [f"127.0.0.1:{stack.ports.gateway_metrics}" for stack in (local, other)]
        # Prometheus scrapes both replicas in its `gateway` job, as deployed.
        for process in (*gateways, local.start_prometheus(binaries[1], {"gateway": scraped})):
            local.wait_ready(process)
        yield Replicated(Stack(local, key), other, redis)
    except StackError as exc:
        if "not installed" in str(exc) or "building" in str(exc):
            require("the stack", exc)
        raise
    finally:
        other.stop_all()
        local.stop_all()
        redis.stop()


def _clashing_lines(gateway: LocalStack) -> list[str]:
    """The gateway_fleet_agents_clashing lines of a gateway's /metrics."""
    status, body = http_get(f"{gateway.gateway_metrics_url}/metrics", timeout=5)
    assert status == 200
    lines = body.decode().splitlines()
    return sorted(line for line in lines if line.startswith("gateway_fleet_agents_clashing{"))


def test_two_processes_each_on_its_own_gateway_replica_raise_the_clash(
    replicated: Replicated,
) -> None:
    stack, other = replicated.stack, replicated.other
    service, interval = "replicated-connector", 15.0
    shared = {"OTEL_RESOURCE_ATTRIBUTES": "service.instance.id=orders-shared"}
    first = stack.agent("shared-1", service, interval, **shared)
    poll(
        "the first process in the fleet of both replicas",
        lambda: all(stack.fleet(service, g) for g in (stack.local, other)),
        60,
    )
    started = time.monotonic()
    # The second process's exports reach the other replica only.
    second = stack.agent(
        "shared-2",
        service,
        interval,
        OTEL_EXPORTER_OTLP_ENDPOINT=other.gateway_grpc_endpoint,
        **shared,
    )
    poll(
        "the clash on both replicas' /api/fleet",
        lambda: all(
            [row["clash"] for row in stack.fleet(service, g)] == [True]
            for g in (stack.local, other)
        ),
        timeout=4 * interval,
    )
    in_fleet = time.monotonic() - started
    alerts = poll(
        "AgentIdentityClash in Prometheus",
        lambda: stack.alerts("AgentIdentityClash", service),
        timeout=4 * interval,
    )
    firing = time.monotonic() - started
    print(
        f"\n[identity] clash across replicas ({interval:.0f} s exports) on both /api/fleet "
        f"{in_fleet:.0f} s, AgentIdentityClash firing {firing:.0f} s after the second "
        "process started"
    )
    # One alert from the row both replicas expose: the same series on each.
    lines = [_clashing_lines(g) for g in (stack.local, other)]
    assert len(lines[0]) == 1
    assert lines[0] == lines[1]
    assert len(alerts) == 1
    labels = alerts[0]["metric"]
    assert (labels["instance"], labels["tenant_id"], labels["hosts"]) == (
        "orders-shared",
        TENANT,
        os.uname().nodename,
    )
    # Its first export comes one interval after its start; two more at most.
    assert firing <= 3 * interval + 10, firing
    for process in (first, second):
        stack.local.stop(process)
