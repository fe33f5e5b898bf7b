"""CPU of the fleet exchange per changed row: one gateway process's table and a real redis-server.

`python -m bench.fleet_exchange`: 1,000 agents of 100 tenants (11 resource attributes
each, as otel_agents sends them), 333 of them heard between two exchanges (what 10,000
agents exporting every 30 s send a second), the process alone in the store. Prints the
median over 30 exchanges of the process CPU that `_fleet` (send, merge, read back)
took, per changed row; no request runs meanwhile, so all of it is the exchange's. And
redis-server's CPU per changed row over all the exchanges (its clock ticks are 10 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from redis.asyncio import Redis

from bench.procstat import cpu_seconds
from gateway.fleet import FleetTracker
from gateway.fleet.rows import Agent
from gateway.ratelimit import LeasedRateLimiter
from gateway.series import ActiveSeries
from gateway.state_redis import RedisState
from gateway.throttle import FailureThrottle
from stack.redis_server import RedisServer


def _agent(tenant: int, number: int) -> tuple[str, Agent]:
    tenant_id = f"tenant-{tenant:03d}"
    resource = {
        "service.name": f"svc-{number}",
        "service.instance.id": f"{tenant_id}-{number:02d}-0123456789abcdef",
        "service.version": "1.4.2",
        "service.namespace": "connectors",
        "host.name": f"host-{tenant}-{number}.example.internal",
        "agent.type": "connector",
        "deployment.environment": "production",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.language": "python",
        "telemetry.sdk.version": "1.45.0",
        "tenant_id": tenant_id,
    }
    agent = Agent(
        "connector",
        resource["service.name"],
        resource["service.instance.id"],
        resource["service.version"],
        resource["host.name"],
        stopped=False,
        resource=resource,
        starts=(("a1b2c3d4", 1_765_000_000_123_456_789 + number),),
    )
    return tenant_id, agent


async def _measure(
    server: RedisServer, directory: Path, exchanges: int, per_exchange: int
) -> tuple[list[float], float]:
    """The process's CPU per changed row at each exchange, and Redis's over them all."""
    if server.process is None:
        raise RuntimeError("the Redis server is not started")
    redis_pid = server.process.pid
    client = Redis.from_url(server.url)
    now = [1.8e9]
    fleet = FleetTracker(directory / "fleet.json", save_every=1e9, clock=lambda: now[0])
    state = RedisState(
        client,
        fleet,
        LeasedRateLimiter(),
        ActiveSeries(600.0),
        FailureThrottle(10, 60.0, 60.0),
        replica="bench",
        clock=lambda: now[0],
    )
    agents = [_agent(tenant, number) for tenant in range(100) for number in range(10)]
    for tenant_id, agent in agents:
        fleet.see(tenant_id, agent, now=now[0])
    await state._membership()
    await state._fleet()
    per_row, heard = [], 0
    redis_started = cpu_seconds(redis_pid)
    for _ in range(exchanges):
        now[0] += 1.0
        for step in range(per_exchange):  # each request from the next agent
            tenant_id, agent = agents[heard % len(agents)]
            fleet.see(tenant_id, agent, now=now[0] + step / per_exchange)
            heard += 1
        started = time.process_time()
        await state._fleet()
        per_row.append((time.process_time() - started) / per_exchange * 1e6)
    redis_cpu = cpu_seconds(redis_pid) - redis_started
    await client.aclose()
    return per_row, redis_cpu / (exchanges * per_exchange) * 1e6


def main() -> None:
    """Run it and print the median."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=30)
    parser.add_argument("--rows", type=int, default=333, help="rows changed per exchange")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis")
        server.start()
        try:
            per_row, redis_per_row = asyncio.run(
                _measure(server, Path(tmp), args.exchanges, args.rows)
            )
        finally:
            server.stop()
    print(
        f"fleet exchange CPU per changed row: median {statistics.median(per_row):.1f} µs "
        f"(min {min(per_row):.1f}, max {max(per_row):.1f}) over {args.exchanges} exchanges "
        f"of {args.rows} rows; redis-server's: {redis_per_row:.1f} µs"
    )


if __name__ == "__main__":
    main()
