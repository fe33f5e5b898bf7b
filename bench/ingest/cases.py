"""The cases: each SUT's load shapes, where results go, the thresholds of a suspect figure."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from bench.loadgen import Target
from stack.local import REPO

RESULTS = REPO / "bench" / "results" / "ingest.json"
RUN_DIR = REPO / ".run" / "bench-ingest"
GATEWAY_ENV = {
    # Limits stay on (auth, rate, series, points, sizes, tenant stamping); only the
    # rate limit is raised above what the benchmark sends. Defaults kept: 10,000
    # active series per tenant (the load has points x 2 agents <= 1,000 per tenant),
    # 10,000 points and 8 MiB per request.
    "GATEWAY_RATE_LIMIT_REQUESTS_PER_SECOND": "1000000",
    "GATEWAY_RATE_LIMIT_BURST": "1000000",
    # All the load comes from one address (loopback): no cap per address.
    "GATEWAY_MAX_GRPC_CALLS_PER_PEER": "0",
    "GATEWAY_MAX_HTTP_CONNECTIONS_PER_PEER": "0",
}
REUSE_PORT_ENV = {"GATEWAY_GRPC_REUSE_PORT": "true"}
TICKS = os.sysconf("SC_CLK_TCK")
SCALE_MIX: Literal["scale-mix"] = "scale-mix"
SCALE_TENANTS = 100
"""The scale mix's tenants, 10 agents each (the scale benchmark's 1,000-agent step)."""
EXPORT_INTERVAL_S = 30.0
"""The agents' export interval (the SDK's default is 60 s; the scale target uses 30 s)."""
SCALE_RATE = 10_000 / EXPORT_INTERVAL_S
"""Requests/s of 10,000 agents exporting every 30 s: the scale target's load."""
Load = Target | Literal["scale-mix"]


@dataclass(frozen=True)
class Case:
    """One load shape against one SUT."""

    sut: str
    target: Load
    points: int
    gzip: bool = False
    paced: bool = False
    """Open loop at --scale-rate (the scale mix only) instead of a closed loop."""

    @property
    def name(self) -> str:
        """E.g. `gateway grpc 20p gzip`, `gateway scale-mix gzip`, `... scale-mix gzip paced`."""
        if self.target == SCALE_MIX:
            return f"{self.sut} {SCALE_MIX} gzip" + (" paced" if self.paced else "")
        return f"{self.sut} {self.target} {self.points}p" + (" gzip" if self.gzip else "")


def _otlp(sut: str, *targets: Target) -> list[Case]:
    return [Case(sut, t, p, gz) for t in targets for p in (20, 500) for gz in (False, True)]


def _shared_state(sut: str) -> list[Case]:
    """The cases compared between the gateway in memory and with its state in Redis."""
    return [
        Case(sut, "grpc", 20),
        Case(sut, SCALE_MIX, 0, True),
        Case(sut, SCALE_MIX, 0, True, paced=True),
    ]


BLOCKS: dict[str, list[Case]] = {
    "gateway": [*_otlp("gateway", "grpc", "http"), *_shared_state("gateway")[1:]],
    "gateway_redis": _shared_state("gateway_redis"),
    "gateway_redis_x2": _shared_state("gateway_redis_x2"),
    "collector": [*_otlp("collector", "grpc"), Case("collector", SCALE_MIX, 0, True)],
    "bare_hop": [Case("bare_hop", "grpc", 20), Case("bare_hop", "grpc", 500)],
    "previous_design": [
        Case("previous_design", "legacy-json", 20),
        Case("previous_design", "legacy-json", 7),
    ],
    "gateway_x1": [Case("gateway_x1", "grpc", 20)],
    "gateway_x2": _shared_state("gateway_x2"),
    "sink": [Case("sink", "grpc", 20), Case("sink", "grpc", 500), Case("sink", "http", 20)],
}
"""Throughput cases per SUT; `collector` is the Collector alone (no gateway);
`gateway_redis` is one gateway with GATEWAY_STATE_URL on a redis-server of its own,
`gateway_redis_x2` two workers (`serve --workers 2`) sharing one."""
SHARED_STATE_BASES = {
    "gateway": "gateway",
    "gateway_redis": "gateway",
    "gateway_x2": "gateway_x2",
    "gateway_redis_x2": "gateway_x2",
}
"""Compared side by side, each with the same number of processes in memory: one process
with Redis against one in memory, two workers with Redis against two processes on one
port each with its own state (`gateway_x2`: the same split of the load, no sharing)."""
LATENCY_PATHS: list[tuple[Load, int]] = [
    ("grpc", 20),
    ("grpc", 500),
    ("http", 20),
    (SCALE_MIX, 0),
]
"""Open-loop paths: the first three at a share of the maximum, the scale mix at --scale-rate."""
ACHIEVED_MIN = 0.95
"""An open-loop run that answered OK less than this share of its rate was overloaded."""
GENERATOR_LAG_MS = 1.0
"""A p99 send lag above this (the generator behind its schedule) makes a latency suspect."""
BUSY_CORES = 0.1
"""Other work on the benchmark's cores above this (cores' worth) makes a latency suspect."""
