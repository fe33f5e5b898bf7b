"""Past one Prometheus: agents → 2 gateways → 2 Collectors → 2 Prometheus shards → Thanos.

The topology of stack/thanos_stack.py, from the repository's files: two lanes (a
gateway and its Collector each; lane i's Collector is scraped by shard i), the
shards of prometheus/shard-K-of-2.yml remote-writing to Thanos Receive, Thanos
Query over Receive and Thanos Ruler, the Ruler running the fleet-wide rules, and
Alertmanager. Each tenant has one real otel_agents connector on each lane, so its
totals and its service span both shards. targets/collector.json also lists a
Collector that is down, which the Ruler must report as CollectorDown.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from needs import require
from polling import poll

from otel_agents import AgentTelemetry, ConnectorMetrics, connector_metrics, setup_metrics
from stack.local import (
    StackError,
    alertmanager_binary,
    collector_binary,
    http_get,
    prometheus_binary,
)
from stack.shards import port_on_shard
from stack.thanos import thanos_binary
from stack.thanos_stack import ThanosStack, thanos_stack

pytestmark = pytest.mark.e2e

Keys = tuple[Path, dict[str, str]]

SERVICE = "e2e-thanos-connector"
LANES = 2
# (rows, bytes) each agent sends, by tenant and lane: every total differs.
BATCHES = {
    ("acme", 0): [(100, 4096), (250, 10_240)],
    ("acme", 1): [(1, 77)],
    ("globex", 0): [(5, 640)],
    ("globex", 1): [(7, 900), (3, 300)],
}
# This agent reports connector_connected = 0: ConnectorDisconnected, a per-agent
# alert, comes from its shard.
DISCONNECTED = ("globex", 1)
# Prometheus labels that only say where a series went through.
ROUTE_LABELS = {"prometheus_shard", "receive_replica", "receive_tenant"}


def _instance(tenant: str, lane: int) -> str:
    return f"{tenant}-lane-{lane}"


@dataclass
class Agent:
    """One running connector of the test."""

    tenant: str
    lane: int
    telemetry: AgentTelemetry
    counters: ConnectorMetrics


@dataclass
class Fleet:
    """The stack and the agents sending to it."""

    stack: ThanosStack
    agents: list[Agent]
    dead_collector: str
    started: float
    """time.monotonic() before the stack started."""
    agents_started: float
    """time.time() when the agents started counting."""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, tenant_keys: Keys) -> Iterator[Fleet]:
    """The topology with a connector per tenant and lane; agents stop before the stack."""
    for what, find in (
        ("the Collector", collector_binary),
        ("Prometheus", prometheus_binary),
        ("Alertmanager", alertmanager_binary),
        ("Thanos", thanos_binary),
    ):
        try:
            find()
        except StackError as exc:
            require(what, exc)
    tenants_file, keys = tenant_keys
    dead_collector = f"127.0.0.1:{port_on_shard(1, 2)}"
    started = time.monotonic()
    with thanos_stack(
        tmp_path_factory.mktemp("thanos"),
        tenants_file,
        lanes=LANES,
        shards=2,
        extra_collector_targets=[dead_collector],
    ) as stack:
        print(f"\n[thanos] stack ready in {time.monotonic() - started:.1f} s")
        agents_started = time.time()
        agents = [_start_agent(stack, keys[tenant], tenant, lane) for tenant, lane in BATCHES]
        # Queries processed keep growing, so that the rate rules have something to sum.
        stop = threading.Event()
        ticker = threading.Thread(target=_count_queries, args=(agents, stop), daemon=True)
        ticker.start()
        try:
            yield Fleet(stack, agents, dead_collector, started, agents_started)
        finally:
            stop.set()
            ticker.join()
            for agent in agents:
                agent.telemetry.shutdown(timeout_s=5)
        processes = stack.processes()
    assert all(p.popen.poll() is not None for p in processes)
    print(f"[thanos] module took {time.monotonic() - started:.1f} s")


def _start_agent(stack: ThanosStack, key: str, tenant: str, lane: int) -> Agent:
    telemetry = setup_metrics(
        SERVICE,
        "connector",
        api_key=key,
        endpoint=stack.lanes[lane].gateway_grpc_endpoint,
        set_global=False,
        environ={
            "OTEL_METRIC_EXPORT_INTERVAL": "2000",
            "OTEL_RESOURCE_ATTRIBUTES": f"service.instance.id={_instance(tenant, lane)}",
            "OTEL_AGENTS_HANDLE_SIGTERM": "false",
        },
    )
    assert telemetry.enabled
    counters = connector_metrics(telemetry)
    for rows, nbytes in BATCHES[(tenant, lane)]:
        counters.record_batch(rows, nbytes)
    counters.set_connected((tenant, lane) != DISCONNECTED)
    return Agent(tenant, lane, telemetry, counters)


def _count_queries(agents: list[Agent], stop: threading.Event) -> None:
    while not stop.wait(0.1):
        for agent in agents:
            agent.counters.record_query()


def _by(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    return {s["metric"].get(label, ""): float(s["value"][1]) for s in result}


def _without_route(metric: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in metric.items() if k not in ROUTE_LABELS))


def _every_agent_in_query(fleet: Fleet) -> None:
    instances = {_instance(t, lane) for t, lane in BATCHES}

    def arrived() -> bool:
        result = fleet.stack.query.query(f'connector_bytes_sent_total{{job="{SERVICE}"}}')
        return set(_by(result, "instance")) == instances

    poll("every agent's bytes in Thanos Query", arrived, timeout=90)


def test_each_tenants_totals_are_exact_through_thanos_query(fleet: Fleet) -> None:
    _every_agent_in_query(fleet)
    query = fleet.stack.query
    for metric, column in (("bytes_sent", 1), ("records_sent", 0)):
        expected: dict[str, float] = {}
        for (tenant, _), batches in BATCHES.items():
            expected[tenant] = expected.get(tenant, 0) + sum(b[column] for b in batches)
        promql = f'sum by (tenant_id) (connector_{metric}_total{{job="{SERVICE}"}})'
        seen = _by(query.query(promql), "tenant_id")
        print(f"[thanos] {promql}: {seen}")
        assert seen == expected


def test_every_agent_series_is_stored_once_from_its_lanes_shard(fleet: Fleet) -> None:
    _every_agent_in_query(fleet)
    at = time.time()
    selector = f'{{job="{SERVICE}"}}'
    on_shards: set[tuple[tuple[str, str], ...]] = set()
    for shard in fleet.stack.shards:
        local = shard.query(selector, at=at)
        assert {s["metric"]["instance"] for s in local} == {
            _instance(tenant, lane) for tenant, lane in BATCHES if lane == shard.index
        }
        on_shards |= {_without_route(s["metric"]) for s in local}

    # What the shards held at `at` reaches Receive within a remote-write batch.
    def delivered() -> list[dict[str, Any]] | None:
        copies = fleet.stack.query.query(selector, at=at, dedup=False)
        return copies if {_without_route(s["metric"]) for s in copies} == on_shards else None

    copies = poll("the shards' series in Thanos", delivered, timeout=30)
    for series in copies:
        labels = series["metric"]
        tenant, _, lane = labels["instance"].rpartition("-lane-")
        assert labels["tenant_id"] == tenant, labels
        assert labels["prometheus_shard"] == lane, labels
        assert labels["receive_tenant"] == "default-tenant", labels
    stored = [_without_route(s["metric"]) for s in copies]
    assert len(stored) == len(set(stored)), "a series was written by more than one shard"
    merged = fleet.stack.query.query(selector, at=at)
    assert sorted(_without_route(s["metric"]) for s in merged) == sorted(stored)
    print(f"[thanos] {len(stored)} agent series, each stored once, as on the shards")


def test_gateway_series_come_from_every_shard_and_merge_into_one(fleet: Fleet) -> None:
    query = fleet.stack.query
    gateways = {f"127.0.0.1:{lane.ports.gateway_metrics}" for lane in fleet.stack.lanes}

    def from_both_shards() -> list[dict[str, Any]] | None:
        result = query.query('up{job="gateway"}', dedup=False)
        return result if len(result) == 4 else None

    copies = poll("each gateway's `up` from both shards", from_both_shards, timeout=60)
    assert {(s["metric"]["instance"], s["metric"]["prometheus_shard"]) for s in copies} == {
        (gateway, shard) for gateway in gateways for shard in ("0", "1")
    }
    merged = query.query('up{job="gateway"}')
    assert _by(merged, "instance") == dict.fromkeys(gateways, 1.0)

    # The gateway sends each agent's last-seen series to the agent's own Collector:
    # the per-agent rule over them runs on that Collector's shard alone.
    age = f'tenant_service_instance:connector_last_seen_age_seconds{{service="{SERVICE}"}}'

    def one_per_agent() -> list[dict[str, Any]] | None:
        found = query.query(age, dedup=False)
        return found if len(found) == 4 else None

    ages = poll("one last-seen age per agent", one_per_agent, 60)
    assert {(a["metric"]["instance"], a["metric"]["prometheus_shard"]) for a in ages} == {
        (_instance(t, lane), str(lane)) for t, lane in BATCHES
    }


def test_the_ruler_evaluates_fleet_rules_on_the_global_view(fleet: Fleet) -> None:
    query = fleet.stack.query
    expected = {
        # Every agent is known to one of the two gateways; all report.
        "pipeline:agents_known:count": 4.0,
        "pipeline:agents_reporting:count": 4.0,
        "pipeline:agents_reporting:ratio": 1.0,
        # One service per tenant whose uptime moves.
        "pipeline:agents_fresh_end_to_end:count": 2.0,
    }

    seen: dict[str, list[float]] = {}

    def values() -> dict[str, float] | None:
        seen.update({name: [float(s["value"][1]) for s in query.query(name)] for name in expected})
        flat = {name: v[0] for name, v in seen.items() if len(v) == 1}
        return flat if flat == expected else None

    try:
        assert poll("the Ruler's fleet counts", values, timeout=150) == expected
    finally:
        print(f"the Ruler's fleet counts, last read: {seen}")

    # dashboards.yml sums a service over its instances, here one on each shard:
    # the Ruler's value is the sum of both shards' parts, not one shard's. A
    # recorded sample is compared with the shards' own evaluation at its time, once
    # its 2-minute window holds over 70 s of data: the Ruler evaluates what remote
    # write has delivered, which may lack the last scrape.
    rate = f'tenant_service:connector_queries_processed:rate2m{{service="{SERVICE}"}}'
    expression = (
        f'sum by (tenant_id) (rate(connector_queries_processed_total{{job="{SERVICE}"}}[2m]))'
    )
    tenants = {tenant for tenant, _ in BATCHES}

    def compared() -> dict[str, tuple[float, list[float]]] | None:
        latest = {s["metric"]["tenant_id"]: s["values"][-1] for s in query.query(f"{rate}[30s]")}
        if latest.keys() != tenants:
            return None
        pairs = {}
        for tenant, (at, value) in latest.items():
            if float(at) < fleet.agents_started + 80:
                return None
            parts = [
                _by(shard.query(expression, at=float(at)), "tenant_id").get(tenant, 0.0)
                for shard in fleet.stack.shards
            ]
            pairs[tenant] = (float(value), parts)
        return pairs

    pairs = poll("a queries rate per tenant, 80 s after the start", compared, timeout=150)
    for tenant, (value, parts) in pairs.items():
        print(f"[thanos] {tenant}: Ruler {value:.3f}/s, shards {parts}")
        assert all(part > 0 for part in parts)
        assert value == pytest.approx(sum(parts), rel=0.15)

    unhealthy = [r for r in fleet.stack.ruler.rules() if r["health"] != "ok"]
    assert not unhealthy

    # PrometheusRuleFailures, on the Ruler, reads the rule failures of every shard
    # and of the Ruler itself; none failed.
    failures = "sum by (instance) (prometheus_rule_evaluation_failures_total)"
    evaluators = {
        "prometheus-shard-0",
        "prometheus-shard-1",
        f"127.0.0.1:{fleet.stack.ruler.http_port}",
    }
    counted = poll(
        "the rule failures of the shards and the Ruler",
        lambda: (r := _by(query.query(failures), "instance")).keys() == evaluators and r,
        timeout=60,
    )
    assert counted == dict.fromkeys(evaluators, 0.0)


def test_alerts_reach_alertmanager_with_the_labels_of_one_prometheus(fleet: Fleet) -> None:
    url = f"{fleet.stack.alertmanager_url}/api/v2/alerts"
    tenant, lane = DISCONNECTED
    expected = {
        # From the Ruler: a fleet-wide rule over a shard's `up`.
        frozenset(
            {
                "alertname": "CollectorDown",
                "severity": "critical",
                "job": "collector",
                "instance": fleet.dead_collector,
                "component": "collector",
                # Listed after the lanes' two Collectors (stack/thanos_stack.py).
                "collector": "collector-2",
            }.items()
        ),
        # From the disconnected agent's shard: a per-agent rule.
        frozenset(
            {
                "alertname": "ConnectorDisconnected",
                "severity": "warning",
                "tenant_id": tenant,
                "service": SERVICE,
                "instance": _instance(tenant, lane),
            }.items()
        ),
    }

    def alerts() -> set[frozenset[tuple[str, str]]] | None:
        status, body = http_get(url)
        assert status == 200, body
        found = {frozenset(a["labels"].items()) for a in json.loads(body)}
        return found if found >= expected else None

    # Both alerts have `for: 1m`; the data needs a scrape, remote write and an
    # evaluation before that minute starts.
    found = poll("both alerts in Alertmanager", alerts, timeout=150)
    print(f"[thanos] alerts {time.monotonic() - fleet.started:.0f} s after the start: {found}")
    assert found == expected
