"""Agents spread over N Collectors by rendezvous hashing: stable, even, and a resize
moves about 1/N of them."""

from __future__ import annotations

from collections import Counter

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import ResourceMetrics

from gateway.shards import ShardMap, agent_key

AGENTS = [f"tenant-{n % 1000}\x00agent-{n}" for n in range(20_000)]
FOUR = ["10.0.0.1:4317", "10.0.0.2:4317", "10.0.0.3:4317", "10.0.0.4:4317"]


def _placement(collectors: list[str]) -> dict[str, str]:
    shards = ShardMap(collectors)
    return {agent: collectors[shards.shard_of(agent)] for agent in AGENTS}


def test_each_agent_has_one_collector_whatever_the_order_of_the_list() -> None:
    assert _placement(FOUR) == _placement(list(reversed(FOUR)))


def test_agents_spread_evenly() -> None:
    counts = Counter(_placement(FOUR).values())
    assert len(counts) == 4
    for count in counts.values():
        assert 0.22 < count / len(AGENTS) < 0.28, counts


@pytest.mark.parametrize("before", [1, 2, 4, 8])
def test_adding_a_collector_moves_about_one_in_n_plus_one_agents_all_to_it(before: int) -> None:
    collectors = [f"collector-{n}:4317" for n in range(before + 1)]
    old, new = _placement(collectors[:-1]), _placement(collectors)
    moved = [agent for agent in AGENTS if old[agent] != new[agent]]
    assert {new[agent] for agent in moved} == {collectors[-1]}
    assert abs(len(moved) / len(AGENTS) - 1 / (before + 1)) < 0.02


def test_removing_a_collector_moves_only_its_agents() -> None:
    old, new = _placement(FOUR), _placement(FOUR[:1] + FOUR[2:])
    moved = {agent for agent in AGENTS if old[agent] != new[agent]}
    assert moved == {agent for agent in AGENTS if old[agent] == FOUR[1]}


def _resource(tenant: str, instance: str) -> ResourceMetrics:
    resource_metrics = ResourceMetrics()
    for key, value in (("tenant_id", tenant), ("service.instance.id", instance)):
        resource_metrics.resource.attributes.append(
            KeyValue(key=key, value=AnyValue(string_value=value))
        )
    return resource_metrics


def test_a_request_is_split_by_agent_and_left_whole_when_it_has_one() -> None:
    shards = ShardMap(FOUR)
    one = ExportMetricsServiceRequest(resource_metrics=[_resource("acme", "a-1")])
    [(index, same)] = shards.split(one).items()
    assert same is one
    assert index == shards.shard_of(agent_key(one.resource_metrics[0].resource))
    mixed = ExportMetricsServiceRequest(
        resource_metrics=[_resource("acme", f"a-{n}") for n in range(40)]
    )
    parts = shards.split(mixed)
    assert len(parts) == 4
    assert sum(len(p.resource_metrics) for p in parts.values()) == 40
    for index, part in parts.items():
        for resource_metrics in part.resource_metrics:
            assert shards.shard_of(agent_key(resource_metrics.resource)) == index


def test_the_same_instance_id_of_two_tenants_is_two_agents() -> None:
    assert agent_key(_resource("acme", "a-1").resource) != agent_key(
        _resource("globex", "a-1").resource
    )
