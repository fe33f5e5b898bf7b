"""A clash is found across gateway replicas sharing the fleet in a real redis-server:
two processes under one identity whose exports reach different replicas are each seen
by one replica only, yet both replicas mark the agent. A restart on the other replica
and one process moving between replicas are never a clash.

Each replica is a FleetTracker with its RedisState, as in a gateway, on one settable
clock; the exchanges are driven by hand. The agent processes are real OpenTelemetry
SDKs (test_fleet_clash.Process).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from prometheus_client import generate_latest
from redis.asyncio import Redis
from test_fleet_clash import ACME, EXPORT_S, Clock, Process

from gateway.fleet import FleetTracker
from gateway.fleet.api import fleet_document
from gateway.fleet.processes import MAX_PROCESSES
from gateway.fleet.rows import Agent
from gateway.ratelimit import LeasedRateLimiter
from gateway.series import ActiveSeries
from gateway.state_redis import PREFIX, RedisState
from gateway.telemetry import GatewayTelemetry
from gateway.tenants import Tenant
from gateway.throttle import FailureThrottle
from stack.redis_server import RedisServer

pytestmark = pytest.mark.slow


@dataclass
class Replica:
    """One gateway's fleet, its share of the store and its /metrics."""

    fleet: FleetTracker
    state: RedisState
    telemetry: GatewayTelemetry

    def clashes(self) -> list[tuple[str, list[str]]]:
        """(instance, hosts) of the clashing agents on /api/fleet."""
        now = self.fleet.clock()
        document = fleet_document(self.fleet, {ACME.id}, now, admin=True)
        return [
            (agent["instance"], agent["clash_hosts"])
            for tenant in document["tenants"]
            for agent in tenant["agents"]
            if agent["clash"]
        ]

    def gauge(self) -> list[str]:
        """The gateway_fleet_agents_clashing lines of its /metrics."""
        text = generate_latest(self.telemetry.registry).decode()
        return [line for line in text.splitlines() if line.startswith("gateway_fleet_agents_")]


@asynccontextmanager
async def replicas(tmp_path: Path, url: str, clock: Clock) -> AsyncIterator[list[Replica]]:
    made = []
    for name in ("a", "b"):
        fleet = FleetTracker(tmp_path / f"{name}.json", silent_after=4 * EXPORT_S, clock=clock)
        telemetry = GatewayTelemetry.create()
        fleet.register_metrics(telemetry.provider.get_meter("gateway.fleet"))
        client = Redis.from_url(url, socket_timeout=2.0)
        state = RedisState(
            client,
            fleet,
            LeasedRateLimiter(),
            ActiveSeries(60.0),
            FailureThrottle(0, 60.0, 60.0),
            replica=name,
            clock=clock,
        )
        made.append(Replica(fleet, state, telemetry))
    try:
        yield made
    finally:
        for replica in made:
            await replica.state.client.aclose()


def send(replica: Replica, clock: Clock, process: Process) -> None:
    """One export of `process` reaching `replica`, half an interval after the last one."""
    clock.now += EXPORT_S / 2  # two processes: each exports once per interval
    request: ExportMetricsServiceRequest = process.export()
    replica.fleet.on_request(ACME, request)


async def exchange(*replicas: Replica) -> None:
    for replica in replicas:
        assert await replica.state.exchange_once()


def clashing_lines(replica: Replica) -> list[str]:
    return [line for line in replica.gauge() if line.startswith("gateway_fleet_agents_clashing{")]


def test_two_processes_each_on_its_own_replica_clash_on_both(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async def scenario() -> None:
        clock = Clock()
        async with replicas(tmp_path, redis_server.url, clock) as (a, b):
            pods = [Process("pod-a"), Process("pod-b")]  # one service.instance.id
            exchanges = 0
            while not (a.clashes() and b.clashes()):
                assert exchanges < 2, "no clash on both replicas within 2 exchanges"
                send(a, clock, pods[0])
                send(b, clock, pods[1])
                await exchange(a, b)
                exchanges += 1
            # Neither replica ever saw the two processes' exports alternate by itself.
            assert a.clashes() == b.clashes() == [("c4a17407", ["pod-a", "pod-b"])]
            for replica in (a, b):
                [line] = clashing_lines(replica)
                assert 'hosts="pod-a,pod-b"' in line
                assert line.endswith(" 1.0")
                assert 'service_instance_id="c4a17407"' in line
            # The same label set on both: the alert's max by (...) sees one agent.
            assert clashing_lines(a) == clashing_lines(b)
            for _ in range(10):  # as long as both run (past silent_after), on both
                send(a, clock, pods[0])
                send(b, clock, pods[1])
                await exchange(a, b)
                assert a.clashes() == b.clashes() == [("c4a17407", ["pod-a", "pod-b"])]

            for _ in range(6):  # pod-b is gone: the mark ends after silent_after
                send(a, clock, pods[0])
                clock.now += EXPORT_S / 2
                await exchange(a, b)
            assert a.clashes() == b.clashes() == []
            assert clashing_lines(a) == clashing_lines(b) == []

    asyncio.run(scenario())


def test_one_host_two_processes_through_two_replicas_clash_by_their_start_times(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async def scenario() -> None:
        clock = Clock()
        async with replicas(tmp_path, redis_server.url, clock) as (a, b):
            first = Process("node-1")
            clock.now += 1.0
            second = Process("node-1")
            for _ in range(2):
                send(a, clock, first)
                send(b, clock, second)
                await exchange(a, b)
            assert a.clashes() == b.clashes() == [("c4a17407", ["node-1"])]

    asyncio.run(scenario())


def test_a_restart_on_the_other_replica_is_no_clash(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async def scenario() -> None:
        clock = Clock()
        async with replicas(tmp_path, redis_server.url, clock) as (a, b):
            old = Process("node-1")
            for _ in range(3):
                send(a, clock, old)
                await exchange(a, b)
            # Killed (no final export); its successor's connection lands on b, then
            # moves between both (a load balancer's reconnections).
            new = Process("node-1")
            for replica in (b, b, a, b, a, a):
                send(replica, clock, new)
                await exchange(a, b)
                assert a.clashes() == b.clashes() == []
            # Rescheduled on another host, reaching a.
            moved = Process("node-2")
            for replica in (a, b, a):
                send(replica, clock, moved)
                await exchange(b, a)
                assert a.clashes() == b.clashes() == []
            assert clashing_lines(a) == clashing_lines(b) == []

    asyncio.run(scenario())


def test_one_process_moving_between_replicas_is_no_clash(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async def scenario() -> None:
        clock = Clock()
        async with replicas(tmp_path, redis_server.url, clock) as (a, b):
            process = Process("node-1")
            # Back and forth faster than the exchanges: each replica holds part of its
            # sightings until they meet in the store.
            for replica in (a, b, a, b, b, a):
                send(replica, clock, process)
            await exchange(a, b, a)
            for replica in (b, a, b, a):
                send(replica, clock, process)
                await exchange(a, b)
            assert a.clashes() == b.clashes() == []
            rows = [r.fleet.sightings()[0] for r in (a, b)]
            assert rows[0].processes == rows[1].processes  # both know it as one process
            assert {p[0] for p in rows[0].processes} == {"node-1"}

    asyncio.run(scenario())


def test_an_agent_changing_identity_at_each_export_keeps_its_row_small(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async def scenario() -> None:
        clock = Clock()
        async with replicas(tmp_path, redis_server.url, clock) as (a, b):
            for i in range(60):  # a new host name, and new start times, at each export
                send(a if i % 2 else b, clock, Process(f"host-{i:03d}-{'x' * 300}"))
                if i % 10 == 9:
                    await exchange(a, b)
            await exchange(a, b)
            raw = await a.state.client.hvals(PREFIX + "fleet")
            [document] = [json.loads(r) for r in raw]
            assert len(document["processes"]) == MAX_PROCESSES
            assert all(len(p[0]) == 128 for p in document["processes"])  # names are cut
            assert len(raw[0]) < 4096
            for replica in (a, b):
                [row] = replica.fleet.sightings()
                assert row.processes == [tuple(p) for p in document["processes"]]

    asyncio.run(scenario())


def test_two_hosts_clash_even_when_their_processes_share_no_series(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async def scenario() -> None:
        clock = Clock()
        async with replicas(tmp_path, redis_server.url, clock) as (a, b):

            def pod(host: str, series: str, start: int) -> Agent:
                starts = tuple((f"{series}{i:07x}", start) for i in range(2))
                return Agent("connector", "orders", "c4a17407", "1", host, False, starts=starts)

            # Their first points differ (another attribute value each): no series in common.
            for _ in range(2):
                for replica, agent in ((a, pod("pod-a", "a", 1)), (b, pod("pod-b", "b", 2))):
                    clock.now += EXPORT_S / 2
                    replica.fleet.see(ACME.id, agent)
                await exchange(a, b)
            assert a.clashes() == b.clashes() == [("c4a17407", ["pod-a", "pod-b"])]

    asyncio.run(scenario())


def test_killed_and_rescheduled_back_and_forth_is_no_clash(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async def scenario() -> None:
        clock = Clock()
        async with replicas(tmp_path, redis_server.url, clock) as (a, b):
            # Each process killed (no final export) after two exports, its successor on
            # the other node within seconds, its connection on either replica.
            for i, (host, replica) in enumerate(
                [("node-1", a), ("node-2", b), ("node-1", b), ("node-2", a), ("node-1", a)]
            ):
                clock.now += 1.0
                process = Process(host)
                for _ in range(2):
                    send(replica, clock, process)
                    await exchange(a, b)
                    assert a.clashes() == b.clashes() == [], f"process {i} on {host}"

    asyncio.run(scenario())


def test_another_tenant_sending_as_an_agent_never_marks_it(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """globex sends the very resource of acme's agent (service, instance id, another
    host) through the other replica, interleaved with it: rows are per tenant, so
    neither acme's agent nor globex's copy clashes, on either replica."""

    async def scenario() -> None:
        clock = Clock()
        async with replicas(tmp_path, redis_server.url, clock) as (a, b):
            mine, copy = Process("pod-a"), Process("pod-b")  # one service.instance.id
            for _ in range(6):
                send(a, clock, mine)
                clock.now += EXPORT_S / 2
                b.fleet.on_request(Tenant("globex"), copy.export())
                await exchange(a, b)
            for replica in (a, b):
                rows = replica.fleet.sightings()
                assert sorted(r.tenant_id for r in rows) == ["acme", "globex"]
                now = replica.fleet.clock()
                assert not [r.tenant_id for r in rows if replica.fleet.clashing(r, now)]
                assert clashing_lines(replica) == []

    asyncio.run(scenario())
