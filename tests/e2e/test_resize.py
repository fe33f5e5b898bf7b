"""A resize of the Collector tier: the gateway restarted from 2 Collectors to 3.

Where this sits: agents ──▶ gateway ──(*one agent → one of N Collectors*)──▶ Collectors
──▶ Prometheus (docs/scaling.md, "Sharded Collectors").

Three Collectors run from the start, all scraped; the gateway first sends to two of
them. Twelve real connector processes (E2E_RESIZE_AGENTS; otel_agents, distinct
`service.instance.id`, exporting every second) count FIRST records each. The gateway
is then restarted with all three: rendezvous hashing moves the agents whose best
Collector is the new one. Once every moved agent shows on its new Collector, each
agent counts SECOND records more. Then:

- the agents that moved are exactly those `ShardMap` predicts (about 1/3);
- each Collector's copy of an agent is its own Prometheus series (the targets'
  `collector` label): no copy ever goes down (`resets()` is 0), the copy left on the
  old Collector is frozen at FIRST while the live one reaches FIRST + SECOND, and
  `max without (collector)` reads the agent's exact total;
- a second Prometheus that scrapes the same Collectors without the label (as before
  it existed) appends both copies to one series in turn: false resets, and an
  increase() ten times too large.

The old Collector drops the frozen copy after its metric_expiration (3 minutes);
E2E_RESIZE_EXPIRY=1 also waits for that (about 4 more minutes).
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from needs import require
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from polling import poll

from gateway.shards import ShardMap, agent_key
from stack.local import (
    PROMETHEUS_CONFIG,
    LocalStack,
    Process,
    StackError,
    collector_binary,
    collector_name,
    free_port,
    http_get,
    prometheus_binary,
)

pytestmark = pytest.mark.e2e

BEFORE, AFTER = 2, 3
"""Collectors the gateway sends to before and after the resize."""
AGENTS = int(os.environ.get("E2E_RESIZE_AGENTS", "12"))
SERVICE = "resize-connector"
AGENT_PREFIX = "resize-agent-"
FIRST, SECOND = 10_000, 1_000
"""Records each agent counts before the resize, and once it is over."""
METRIC = f'connector_records_sent_total{{job="{SERVICE}"}}'
EXPORT_INTERVAL_MS = 1000
EXPIRY = os.environ.get("E2E_RESIZE_EXPIRY", "") == "1"

# Counts FIRST records, then SECOND more once the file RESIZE_GO_FILE exists; exports
# every OTEL_METRIC_EXPORT_INTERVAL until it is stopped.
AGENT = f"""
import os, pathlib, time
from otel_agents import connector_metrics, setup_metrics
counters = connector_metrics(setup_metrics(os.environ["OTEL_SERVICE_NAME"], "connector"))
counters.record_batch({FIRST}, {FIRST * 64})
go = pathlib.Path(os.environ["RESIZE_GO_FILE"])
while not go.exists():
    time.sleep(0.1)
counters.record_batch({SECOND}, {SECOND * 64})
while True:
    time.sleep(60)
"""


@dataclass(frozen=True)
class Agent:
    """One agent process's identity."""

    tenant: str
    instance: str

    def key(self) -> str:
        """Its key in the gateway's ShardMap, from the resource the gateway sees."""
        attributes = {"tenant_id": self.tenant, "service.instance.id": self.instance}
        resource = Resource(
            attributes=[
                KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in attributes.items()
            ]
        )
        return agent_key(resource)


def series(**labels: str) -> str:
    """The selector of the agents' record counter with `labels` too (a value
    starting with `~` is a regular expression)."""
    matchers = "".join(
        f',{name}=~"{value[1:]}"' if value.startswith("~") else f',{name}="{value}"'
        for name, value in labels.items()
    )
    return f'connector_records_sent_total{{job="{SERVICE}"{matchers}}}'


def placement(endpoints: list[str], agents: list[Agent]) -> dict[str, str]:
    """Each agent's Collector (its `collector` label) when the gateway sends to `endpoints`."""
    shards = ShardMap(endpoints)
    return {a.instance: collector_name(shards.shard_of(a.key())) for a in agents}


def moved_share(endpoints: list[str], agents: int = 10_000) -> float:
    """The share of `agents` synthetic agents that ShardMap moves when the last of
    `endpoints` is added."""
    sample = [Agent("acme", f"synthetic-{i}") for i in range(agents)]
    before, after = placement(endpoints[:-1], sample), placement(endpoints, sample)
    return sum(before[a] != after[a] for a in before) / agents


def query(base_url: str, promql: str) -> list[dict[str, Any]]:
    """An instant query's result from the Prometheus at `base_url`."""
    url = f"{base_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    status, body = http_get(url, timeout=5.0)
    if status != 200:
        raise StackError(f"{base_url} answered {status} to {promql!r}: {body[:300]!r}")
    result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
    return result


def wait_until(
    base_url: str,
    promql: str | Callable[[], str],
    predicate: Callable[[list[dict[str, Any]]], bool],
    what: str,
    timeout: float = 60.0,
) -> list[dict[str, Any]]:
    """Poll `promql` (or the query it makes each time) until `predicate` holds on its
    result; fail naming `what`."""
    result: list[dict[str, Any]] = []

    def holds() -> bool:
        nonlocal result
        result = query(base_url, promql if isinstance(promql, str) else promql())
        return predicate(result)

    poll(lambda: f"{what}; {promql!r} returns {result}", holds, timeout)
    return result


def samples_since(selector: str, samples: int, since: float) -> str:
    """The series of `selector` with `samples` samples or more since Unix time `since`."""
    return f"count_over_time({selector}[{int(time.time() - since) + 1}s]) >= {samples}"


def at_least(count: int, result: list[dict[str, Any]]) -> bool:
    """True when `result` has `count` series or more."""
    return len(result) >= count


def by_series(result: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    """{(instance, collector): value} of a query result."""
    return {
        (s["metric"]["instance"], s["metric"].get("collector", "")): float(s["value"][1])
        for s in result
    }


def by_instance(result: list[dict[str, Any]]) -> dict[str, float]:
    """{instance: value} of a query result with one series per instance."""
    values = {s["metric"]["instance"]: float(s["value"][1]) for s in result}
    assert len(values) == len(result), result
    return values


def start_unlabelled_prometheus(stack: LocalStack, binary: Path) -> tuple[Process, str]:
    """A second Prometheus with the repo's prometheus.yml that scrapes the stack's
    Collectors as one target group without a `collector` label (and nothing else)."""
    home = stack.run_dir / "prometheus-unlabelled"
    (home / "targets").mkdir(parents=True)
    (home / "prometheus.yml").symlink_to(PROMETHEUS_CONFIG)
    addresses = [f"127.0.0.1:{c.prometheus}" for c in stack.collector_ports]
    files = {
        "collector": [{"targets": addresses, "labels": {"component": "collector"}}],
        **{name: [] for name in ("gateway", "collector-telemetry", "prometheus", "alertmanager")},
    }
    for name, document in files.items():
        (home / "targets" / f"{name}.json").write_text(json.dumps(document))
    port = free_port()
    argv = [
        str(binary),
        f"--config.file={home / 'prometheus.yml'}",
        f"--storage.tsdb.path={home / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    url = f"http://127.0.0.1:{port}"
    return stack.start_process("prometheus-unlabelled", argv, {}, f"{url}/-/ready"), url


@dataclass
class Resize:
    """What the scenario saw, for the tests below."""

    stack: LocalStack
    unlabelled_url: str
    before: dict[str, str]
    """instance → Collector before the resize, as Prometheus showed it."""
    after: dict[str, str]
    """instance → Collector after the resize, as Prometheus showed it."""
    predicted_before: dict[str, str]
    predicted_after: dict[str, str]
    share_of_10k: float
    restarted_at: float
    """Unix time when the gateway was stopped for the resize."""
    live_at: float
    """Unix time when Prometheus showed every live copy at FIRST + SECOND."""
    figures: dict[str, float]

    def since_live(self) -> str:
        """A range that reaches back to `live_at`."""
        return f"{int(time.time() - self.live_at) + 1}s"

    @property
    def moved(self) -> set[str]:
        """Instances whose Collector changed."""
        return {i for i in self.before if self.before[i] != self.after[i]}


def _choose_stack(run_dir: Path, tenants_file: Path, agents: list[Agent]) -> LocalStack:
    """A stack whose free ports move at least one agent and keep one (ports are random:
    about 1 draw in 130 moves none of 12 agents, and there would be nothing to check)."""
    for _ in range(100):
        stack = LocalStack(run_dir, tenants_file=tenants_file, collectors=AFTER)
        endpoints = stack.collector_endpoints.split(",")
        before, after = placement(endpoints[:BEFORE], agents), placement(endpoints, agents)
        if 0 < sum(before[i] != after[i] for i in before) < len(agents):
            return stack
    raise AssertionError(f"no ports moved some but not all of {len(agents)} agents in 100 draws")


@pytest.fixture(scope="module")
def resize(
    tmp_path_factory: pytest.TempPathFactory, tenant_keys: tuple[Path, dict[str, str]]
) -> Iterator[Resize]:
    """The scenario of the module docstring, up to both copies of each moved agent
    having been scraped at least twice since the agents counted SECOND."""
    try:
        collector, prometheus = collector_binary(), prometheus_binary()
    except StackError as exc:
        require("the Collector and Prometheus", exc)
    tenants_file, keys = tenant_keys
    tenants = sorted(keys)
    agents = [Agent(tenants[i % len(tenants)], f"{AGENT_PREFIX}{i:02d}") for i in range(AGENTS)]
    run_dir = tmp_path_factory.mktemp("resize")
    stack = _choose_stack(run_dir, tenants_file, agents)
    endpoints = stack.collector_endpoints.split(",")
    go_file = run_dir / "go"
    started = time.monotonic()
    try:
        for process in stack.start_collectors(collector):
            stack.wait_ready(process)
        stack.wait_ready(stack.start_prometheus(prometheus))
        unlabelled, unlabelled_url = start_unlabelled_prometheus(stack, prometheus)
        stack.wait_ready(unlabelled)
        gateway = stack.start_gateway({"GATEWAY_COLLECTOR_ENDPOINT": ",".join(endpoints[:BEFORE])})
        stack.wait_ready(gateway)
        for agent in agents:
            env = {
                "OTEL_EXPORTER_OTLP_ENDPOINT": stack.gateway_grpc_endpoint,
                "OTEL_AGENTS_API_KEY": keys[agent.tenant],
                "OTEL_METRIC_EXPORT_INTERVAL": str(EXPORT_INTERVAL_MS),
                "OTEL_SERVICE_NAME": SERVICE,
                "OTEL_RESOURCE_ATTRIBUTES": f"service.instance.id={agent.instance}",
                "RESIZE_GO_FILE": str(go_file),
            }
            stack.start_process(agent.instance, [sys.executable, "-c", AGENT], env)

        # Every agent on its Collector of two, counting FIRST.
        result = wait_until(
            stack.prometheus_url,
            METRIC,
            lambda r: len(r) == AGENTS and all(float(s["value"][1]) == FIRST for s in r),
            f"all {AGENTS} agents at {FIRST} records",
            timeout=60 + 2 * AGENTS,
        )
        before = {i: c for (i, c) in by_series(result)}
        figures = {"agents_seen_after_s": time.monotonic() - started}

        # The resize: the gateway again, with the third Collector.
        stopped, restarted_at = time.monotonic(), time.time()
        stack.stop(gateway)
        stack.wait_ready(stack.start_gateway())
        figures["gateway_restart_s"] = time.monotonic() - stopped
        predicted_after = placement(endpoints, agents)
        expected_series = AGENTS + sum(before[i] != predicted_after[i] for i in before)

        # Each moved agent also on its new Collector: one series per copy.
        result = wait_until(
            stack.prometheus_url,
            METRIC,
            lambda r: len(r) == expected_series,
            "every moved agent on its new Collector",
        )
        figures["moved_seen_after_restart_s"] = time.monotonic() - stopped
        copies: dict[str, set[str]] = {}
        for instance, collector_label in by_series(result):
            copies.setdefault(instance, set()).add(collector_label)
        after = {i: min(c - {before[i]}, default=before[i]) for i, c in copies.items()}

        # Each agent counts SECOND more: only the live copies take it.
        go_file.touch()
        counted = time.monotonic()
        wait_until(
            stack.prometheus_url,
            f"max without (collector) ({METRIC})",
            lambda r: len(r) == AGENTS and all(float(s["value"][1]) == FIRST + SECOND for s in r),
            f"every agent's live copy at {FIRST + SECOND}",
        )
        live_at = time.time()
        figures["live_after_s"] = time.monotonic() - counted
        # More scrapes since: two of each copy here (the frozen ones stay behind), and
        # three of the moved agents' one series in the unlabelled Prometheus, which
        # then holds a live sample followed by a frozen one.
        moved = "|".join(i for i in before if before[i] != predicted_after[i])
        for url, selector, samples, count in (
            (stack.prometheus_url, METRIC, 2, expected_series),
            (unlabelled_url, series(instance=f"~{moved}"), 3, expected_series - AGENTS),
        ):
            wait_until(
                url,
                partial(samples_since, selector, samples, live_at),
                partial(at_least, count),
                f"{samples} scrapes since every live copy reached {FIRST + SECOND}",
            )
        figures["total_s"] = time.monotonic() - started
        yield Resize(
            stack=stack,
            unlabelled_url=unlabelled_url,
            before=before,
            after=after,
            predicted_before=placement(endpoints[:BEFORE], agents),
            predicted_after=predicted_after,
            share_of_10k=moved_share(endpoints),
            restarted_at=restarted_at,
            live_at=live_at,
            figures=figures,
        )
    finally:
        # The agents first, while the gateway takes their final export (without it
        # each one waits out its bounded shutdown, ~4.5 s).
        for process in [p for p in stack.processes if p.name.startswith(AGENT_PREFIX)]:
            stack.stop(process)
        stack.stop_all()


def test_the_agents_that_move_are_the_ones_shardmap_predicts(resize: Resize) -> None:
    assert resize.before == resize.predicted_before
    assert resize.after == resize.predicted_after
    # Rendezvous hashing: an agent moves only to the new Collector.
    new = collector_name(AFTER - 1)
    assert {resize.after[i] for i in resize.moved} == {new}
    assert {i for i, c in resize.after.items() if c == new} == resize.moved
    # About 1/3 of the agents, measured on 10,000 keys for the same addresses.
    assert 0.30 < resize.share_of_10k < 0.37
    print(
        f"\n[resize figures] {len(resize.moved)} of {AGENTS} agents moved "
        f"({len(resize.moved) / AGENTS:.0%}); ShardMap moves {resize.share_of_10k:.1%} of "
        f"10,000 agents for the same Collectors; "
        + ", ".join(f"{k} {v:.1f}" for k, v in resize.figures.items())
    )


def test_each_copy_is_its_own_series_and_no_counter_goes_down(resize: Resize) -> None:
    query_ = resize.stack.query
    copies = by_series(query_(METRIC))
    expected = {(i, c): FIRST + SECOND for i, c in resize.after.items()}
    expected |= {(i, resize.before[i]): FIRST for i in resize.moved}
    assert copies == expected

    # No false reset in any copy, over the whole run.
    resets = by_series(query_(f"resets({METRIC}[10m])"))
    assert resets == dict.fromkeys(expected, 0.0)

    # The frozen copy, still scraped, has not changed since the live one went on.
    indexes = {collector_name(i): i for i in range(AFTER)}
    for instance in resize.moved:
        frozen = series(instance=instance, collector=resize.before[instance])
        wait_until(
            resize.stack.prometheus_url,
            partial(samples_since, frozen, 2, resize.live_at),
            partial(at_least, 1),
            f"two scrapes of {frozen} since every live copy went on",
            timeout=30,
        )
        window = resize.since_live()
        changes = by_instance(query_(f"changes({frozen}[{window}])"))
        assert changes == {instance: 0.0}, (frozen, window, changes)
        # The old Collector still exposes it: its metric_expiration has not passed.
        port = resize.stack.collector_ports[indexes[resize.before[instance]]].prometheus
        _, body = http_get(f"http://127.0.0.1:{port}/metrics", timeout=5.0)
        lines = [
            line
            for line in body.decode().splitlines()
            if line.startswith("connector_records_sent_total{") and f'instance="{instance}"' in line
        ]
        assert len(lines) == 1, lines
        assert float(lines[0].rsplit(" ", 1)[1]) == FIRST


def test_max_without_collector_reads_each_agents_exact_total(resize: Resize) -> None:
    query_ = resize.stack.query
    exact = dict.fromkeys(resize.before, float(FIRST + SECOND))
    assert by_instance(query_(f"max without (collector) ({METRIC})")) == exact
    # A sum over the copies counts a moved agent's frozen copy too (until it expires).
    summed = by_instance(query_(f"sum without (collector) ({METRIC})"))
    assert summed == {i: v + (FIRST if i in resize.moved else 0) for i, v in exact.items()}
    # increase() per copy, summed per agent: the frozen copy adds nothing and the live
    # copy its SECOND records, give or take increase()'s extrapolation to the window.
    increase = by_instance(query_(f"sum by (instance) (increase({METRIC}[10m]))"))
    assert set(increase) == set(exact)
    assert all(SECOND <= v < 3 * SECOND for v in increase.values()), increase


def test_without_the_collector_label_the_copies_make_one_jumping_series(resize: Resize) -> None:
    # The unlabelled Prometheus takes each target's samples into one series per agent.
    values = by_instance(query(resize.unlabelled_url, METRIC))
    assert set(values) == set(resize.before)
    resets = by_instance(query(resize.unlabelled_url, f"resets({METRIC}[10m])"))
    jumping = {i for i, v in resets.items() if v > 0}
    assert jumping == resize.moved, resets
    # Every false reset counts the whole total again.
    increase = by_instance(query(resize.unlabelled_url, f"increase({METRIC}[10m])"))
    assert all(increase[i] > FIRST for i in resize.moved), increase
    assert all(increase[i] < 3 * SECOND for i in set(increase) - resize.moved), increase


@pytest.mark.skipif(not EXPIRY, reason="waits for metric_expiration: set E2E_RESIZE_EXPIRY=1")
def test_the_frozen_copy_expires_after_metric_expiration(resize: Resize) -> None:
    result = wait_until(
        resize.stack.prometheus_url,
        METRIC,
        lambda r: len(r) == AGENTS,
        "the frozen copies gone from the old Collectors",
        timeout=300,
    )
    assert by_series(result) == {(i, c): FIRST + SECOND for i, c in resize.after.items()}
    gone = time.time() - resize.restarted_at
    print(f"\n[resize figures] frozen copies gone {gone:.0f} s after the gateway restart")
    sums = by_instance(resize.stack.query(f"sum without (collector) ({METRIC})"))
    assert sums == dict.fromkeys(resize.before, float(FIRST + SECOND))
