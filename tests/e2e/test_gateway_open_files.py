"""Open files are capacity: a gateway started with the soft open-files limit service
managers give (1,024, the hard limit higher) serves 1,500 agents connecting at once."""

from __future__ import annotations

import asyncio
import contextlib
import resource
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from gateway_fixtures import counter_request
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceResponse,
)

from stack.local import LocalStack, http_get

pytestmark = pytest.mark.e2e

EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
AGENTS = 1_500
SERVICE_MANAGER_SOFT_LIMIT = 1_024
RETRIES = 4
RETRYABLE = {grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE}


@contextlib.contextmanager
def soft_open_files_limit(soft: int) -> Iterator[None]:
    """Processes started inside get `soft` as their soft limit (the hard one unchanged)."""
    before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (before, hard))


async def _agents_export(port: int, key: str, agents: int) -> list[grpc.StatusCode]:
    """`agents` clients, each on a connection of its own, exporting at the same moment."""
    channels = [
        # A subchannel pool of its own: one TCP connection per channel, as per agent.
        grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(agents)
    ]

    async def one(index: int, channel: grpc.aio.Channel) -> grpc.StatusCode:
        export = channel.unary_unary(
            EXPORT,
            request_serializer=lambda r: r.SerializeToString(),
            response_deserializer=ExportMetricsServiceResponse.FromString,
        )
        request = counter_request(resource_attributes={"service.instance.id": f"fd-{index}"})
        code = grpc.StatusCode.OK
        # As an OTLP exporter does: a retryable refusal is sent again after a pause
        # (grpcio may cancel a few of 1,500 calls arriving at once). A connection the
        # gateway cannot accept stays refused however often it is tried.
        for attempt in range(RETRIES):
            try:
                await export(request, metadata=(("authorization", f"Bearer {key}"),), timeout=30)
                return grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                code = error.code()
            if code not in RETRYABLE:
                break
            await asyncio.sleep(0.5 * (attempt + 1))
        return code

    try:
        return await asyncio.gather(*(one(i, c) for i, c in enumerate(channels)))
    finally:
        await asyncio.gather(*(c.close() for c in channels))


def test_a_gateway_started_with_1024_open_files_serves_1500_agents(
    stack: LocalStack, tenant_keys: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 2 * AGENTS:
        pytest.skip(f"the hard open-files limit ({hard}) leaves no room for {AGENTS} agents")
    own = LocalStack(tmp_path, tenants_file=tenant_keys[0])
    try:
        with soft_open_files_limit(SERVICE_MANAGER_SOFT_LIMIT):
            gateway = own.start_gateway(
                {
                    "GATEWAY_COLLECTOR_ENDPOINT": stack.collector_endpoints,
                    # About connections, not limits: every export at once is within them.
                    "GATEWAY_MAX_IN_FLIGHT_REQUESTS": str(2 * AGENTS),
                    "GATEWAY_RATE_LIMIT_REQUESTS_PER_SECOND": str(10 * AGENTS),
                    "GATEWAY_RATE_LIMIT_BURST": str(10 * AGENTS),
                    "GATEWAY_IN_FLIGHT_TENANT_SHARE": "1",
                    "GATEWAY_WORK_SECONDS_PER_SECOND": "100",
                    "GATEWAY_WORK_BURST_SECONDS": "100",
                    "GATEWAY_MAX_GRPC_CALLS_PER_PEER": "0",  # every agent is on loopback
                }
            )
        own.wait_ready(gateway, timeout=30)
        codes = asyncio.run(_agents_export(own.ports.gateway_grpc, tenant_keys[1]["acme"], AGENTS))
        refused = {code for code in codes if code != grpc.StatusCode.OK}
        assert codes.count(grpc.StatusCode.OK) == AGENTS, f"refused or failed: {refused}"
        status, body = http_get(f"{own.gateway_metrics_url}/metrics")
        assert status == 200
        max_fds = next(
            float(line.split()[1])
            for line in body.decode().splitlines()
            if line.startswith("process_max_fds ")
        )
        assert max_fds > 2 * AGENTS
        assert "raised from 1024" in gateway.log.read_text()
    finally:
        own.stop_all()
