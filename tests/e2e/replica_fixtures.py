"""Two gateway replicas sharing one real `redis-server`, for the end-to-end tests of the
shared state (docs/scaling.md, "Gateway replicas"): the stack, its agents, and what the
tests ask of it (each replica's fleet, a tenant's rate limit across both)."""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from gateway_fixtures import counter_request, make_tenants
from needs import require
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2_grpc import MetricsServiceStub
from polling import poll

from stack.local import (
    REPO,
    LocalStack,
    Process,
    StackError,
    alertmanager_binary,
    collector_binary,
    http_get,
    prometheus_binary,
)
from stack.redis_server import RedisServer
from stack.tcpproxy import TcpProxy

AGENT_TENANT = "acme"
"""The agents' tenant."""
LIMITED_TENANT = "limited"
"""A tenant with a low rate limit (`rate_limit` of `replica_stack`), for the probes."""


@dataclass
class Agent:
    """One connector process and where it sends."""

    name: str
    replica: int
    process: Process
    instance: str = ""


@dataclass
class Replicas:
    """The stack with two gateway replicas, its agents and what was watched."""

    stack: LocalStack
    redis: RedisServer
    keys: dict[str, str]
    admin_key: str
    proxy: TcpProxy | None = None
    agents: dict[str, Agent] = field(default_factory=dict)
    alerts_seen: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)

    def fleet_document(self, replica: int) -> dict[str, Any]:
        """Replica `replica`'s /api/fleet, read with the admin key."""
        url = f"{self.stack.gateway_ports[replica].http_url}/api/fleet"
        request = urllib.request.Request(  # noqa: S310 (loopback)
            url, headers={"authorization": f"Bearer {self.admin_key}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (loopback)
            document: dict[str, Any] = json.loads(response.read())
        return document

    def fleet(self, replica: int) -> dict[str, dict[str, Any]]:
        """instance → agent of the agents' tenant, from replica `replica`'s admin API."""
        return {
            agent["instance"]: agent
            for tenant in self.fleet_document(replica)["tenants"]
            if tenant["tenant_id"] == AGENT_TENANT
            for agent in tenant["agents"]
        }

    def poll_alerts(self) -> None:
        """Note every alert Alertmanager shows now, with when it was first seen."""
        status, body = http_get(f"{self.stack.alertmanager_url}/api/v2/alerts", timeout=5)
        if status == 200:
            now = time.time()
            for alert in json.loads(body):
                self.alerts_seen.setdefault(alert["fingerprint"], (now, alert))

    def alerts_of(self, instance: str) -> list[tuple[float, str]]:
        """(first seen, alert name) of each alert about `instance`."""
        return sorted(
            (seen, alert["labels"]["alertname"])
            for seen, alert in self.alerts_seen.values()
            if alert["labels"].get("instance") == instance
        )

    def records(self, instance: str) -> list[dict[str, Any]]:
        """Every series of connector_records_sent_total of `instance`."""
        return self.stack.query(f'connector_records_sent_total{{instance="{instance}"}}')

    def start_agent(
        self,
        name: str,
        replica: int,
        interval_ms: int,
        endpoint: str = "",
        extra: Mapping[str, str] | None = None,
    ) -> Agent:
        """A `bench/fleet_agent.py` connector of the agents' tenant sending to replica
        `replica` (or through `endpoint`), exporting every `interval_ms`."""
        locks = self.stack.run_dir / "locks"
        locks.mkdir(mode=0o700, exist_ok=True)
        env = {
            "PYTHONPATH": str(REPO),
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint
            or self.stack.gateway_ports[replica].grpc_endpoint,
            "OTEL_AGENTS_API_KEY": self.keys[AGENT_TENANT],
            "OTEL_METRIC_EXPORT_INTERVAL": str(interval_ms),
            "OTEL_SERVICE_NAME": f"replicas-{name}",
            "XDG_RUNTIME_DIR": str(locks),
            **(extra or {}),
        }
        argv = [sys.executable, "-m", "bench.fleet_agent", "connector"]
        agent = Agent(name, replica, self.stack.start_process(f"agent-{name}", argv, env))
        self.agents[name] = agent
        return agent

    def wait_announced(self, timeout: float = 60.0) -> None:
        """Until every agent has printed its instance id."""
        for agent in self.agents.values():
            agent.instance = str(
                poll(
                    f"{agent.name} announces its instance id",
                    lambda agent=agent: announced(agent.process, "instance"),  # type: ignore[misc]
                    timeout=timeout,
                )
            )


def announced(process: Process, key: str) -> Any:
    """The value of `key` in the first JSON line of `process`'s log that starts with
    it (bench/fleet_agent.py prints them), None before."""
    for line in process.log.read_text(errors="replace").splitlines():
        if line.startswith(f'{{"{key}"'):
            return json.loads(line)[key]
    return None


@contextmanager
def replica_stack(
    run_dir: Path,
    rate_limit: Mapping[str, float],
    settings: Mapping[str, str] | None = None,
    alertmanager: bool = True,
    tenants: Sequence[str] = (),
) -> Iterator[Replicas]:
    """Redis, one Collector, two gateway replicas sharing Redis (with `settings`),
    Prometheus with the repository's rules and, with `alertmanager`, Alertmanager.
    Tenants: the agents', `limited`, whose limits are `rate_limit`, and `tenants`."""
    try:
        binaries = (collector_binary(), prometheus_binary(), alertmanager_binary())
    except StackError as exc:
        require("the stack", exc)
    if shutil.which("redis-server") is None:
        require("redis-server", RuntimeError("not installed"))
    tenants_file = run_dir / "tenants.json"
    keys = make_tenants(tenants_file, AGENT_TENANT, LIMITED_TENANT, *tenants)
    limits_file = run_dir / "limits.yaml"
    limits_file.write_text(yaml.safe_dump({"tenants": {LIMITED_TENANT: dict(rate_limit)}}))
    admin_key = secrets.token_urlsafe(24)
    redis = RedisServer(run_dir / "redis")
    redis.start()
    stack = LocalStack(
        run_dir / "stack",
        tenants_file=tenants_file,
        gateway_replicas=2,
        gateway_state_url=redis.url,
    )
    try:
        stack.wait_ready(stack.start_collector(binaries[0]))
        env = {
            "GATEWAY_ADMIN_KEY_SHA256": hashlib.sha256(admin_key.encode()).hexdigest(),
            "GATEWAY_LIMITS_FILE": str(limits_file),
            **(settings or {}),
        }
        gateways = [stack.start_gateway(env, replica) for replica in (0, 1)]
        for process in (*gateways, stack.start_prometheus(binaries[1])):
            stack.wait_ready(process)
        if alertmanager:
            stack.wait_ready(stack.start_alertmanager(binaries[2]))
        yield Replicas(stack, redis, keys, admin_key)
    finally:
        stack.stop_all()
        redis.stop()


@dataclass
class RateProbe:
    """What a run of requests of tenant `limited` to both replicas in turn got."""

    admitted: list[int]
    refused: list[int]
    other: list[grpc.StatusCode]
    """Refusals for another reason than the rate limit."""
    seconds: float
    admitted_at: list[float] = field(default_factory=list)
    """When each admitted request was sent, in seconds from the first."""

    def admitted_between(self, start: float, end: float) -> int:
        """Requests admitted among those sent between `start` and `end` seconds."""
        return sum(start <= at < end for at in self.admitted_at)


def probe_rate_limit(
    replicas: Replicas, probes: int, gap_s: float, to: Sequence[int] = (0, 1)
) -> RateProbe:
    """Send `probes` requests of tenant `limited`, one every `gap_s`, to the replicas
    `to` in turn."""
    ports = replicas.stack.gateway_ports
    channels = [grpc.insecure_channel(f"127.0.0.1:{p.grpc}") for p in ports]
    stubs = [MetricsServiceStub(channel) for channel in channels]  # type: ignore[no-untyped-call]
    metadata = (("authorization", f"Bearer {replicas.keys[LIMITED_TENANT]}"),)
    # No agent.type: a client the fleet lists but never pages on.
    request = counter_request(resource_attributes={"service.name": "rate-probe"})
    probe = RateProbe([0, 0], [0, 0], [], 0.0)
    try:
        started = time.monotonic()
        for index in range(probes):
            time.sleep(max(0.0, started + index * gap_s - time.monotonic()))
            replica = to[index % len(to)]
            try:
                sent = time.monotonic() - started
                stubs[replica].Export(request, metadata=metadata, timeout=5)
                probe.admitted[replica] += 1
                probe.admitted_at.append(sent)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    probe.other.append(exc.code())
                probe.refused[replica] += 1
        probe.seconds = time.monotonic() - started
    finally:
        for channel in channels:
            channel.close()
    return probe
