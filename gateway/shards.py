"""Which Collector stores which agent: rendezvous hashing over N Collectors.

Where this sits: gateway ──(*shards*: one agent → one Collector)──▶ Collectors ──▶ Prometheus.

Each Collector's prometheus exporter holds every series it was sent until a scrape,
and one of them tops out at a few hundred thousand series (docs/scaling.md). With N
Collectors, each agent (its tenant and stable `service.instance.id`) goes to one of
them, always the same, so that all of an agent's series live on one Collector and
per-agent rules can run where its series are (one Prometheus per shard).

Rendezvous (highest random weight) hashing: an agent goes to the Collector whose
hash of (Collector, agent) is highest. Adding or removing one of N Collectors moves
only the agents whose highest score was that one, about 1/N of them, and the
others stay where they are. A Collector is named by its address.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

TENANT_KEY = "tenant_id"
INSTANCE_KEY = "service.instance.id"
SERVICE_KEY = "service.name"
_CACHE_LIMIT = 200_000
"""Agents whose Collector is remembered (~150 bytes each); past it the memo starts over."""


def score(collector: str, agent: str) -> int:
    """The weight of `agent` for `collector`: the highest wins."""
    digest = hashlib.blake2b(f"{collector}\x00{agent}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class ShardMap:
    """Picks one of `collectors` for each agent; stable while the list is the same."""

    def __init__(self, collectors: Sequence[str]) -> None:
        """`collectors` are the Collectors' addresses, in any order."""
        if not collectors:
            raise ValueError("at least one Collector is needed")
        self.collectors = tuple(collectors)
        self._memo: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.collectors)

    def shard_of(self, agent: str) -> int:
        """The index in `collectors` of the Collector that stores `agent`."""
        if len(self.collectors) == 1:
            return 0
        index = self._memo.get(agent)
        if index is None:
            scores = [score(collector, agent) for collector in self.collectors]
            index = scores.index(max(scores))
            if len(self._memo) >= _CACHE_LIMIT:
                self._memo.clear()
            self._memo[agent] = index
        return index

    def split(self, request: ExportMetricsServiceRequest) -> dict[int, ExportMetricsServiceRequest]:
        """The request's resources grouped by Collector; the request itself when they all
        go to one (an SDK sends one resource per request)."""
        if len(self.collectors) == 1:
            return {0: request}
        shards = [self.shard_of(agent_key(rm.resource)) for rm in request.resource_metrics]
        if len(set(shards)) <= 1:
            return {shards[0] if shards else 0: request}
        parts: dict[int, ExportMetricsServiceRequest] = {}
        for shard, resource_metrics in zip(shards, request.resource_metrics, strict=True):
            parts.setdefault(shard, ExportMetricsServiceRequest()).resource_metrics.append(
                resource_metrics
            )
        return parts


def agent_key(resource: Resource) -> str:
    """An agent's identity from its (stamped) resource: tenant and instance id, else
    tenant and service name."""
    values = {
        kv.key: kv.value.string_value
        for kv in resource.attributes
        if kv.key in (TENANT_KEY, INSTANCE_KEY, SERVICE_KEY)
    }
    instance = values.get(INSTANCE_KEY) or values.get(SERVICE_KEY, "")
    return f"{values.get(TENANT_KEY, '')}\x00{instance}"
