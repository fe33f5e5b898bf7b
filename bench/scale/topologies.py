"""The topologies the scale benchmark compares, each started from the repository's files.

    single   agents ─▶ gateway ─▶ 1 Collector  ◀─scrapes─ 1 Prometheus
    sharded  agents ─▶ gateway ─▶ N Collectors ◀─scrapes─ 1 Prometheus
    thanos   agents ─▶ gateway ─▶ N Collectors ◀─scrapes, hashmod─ 2 Prometheus shards
             shards ─remote write─▶ Thanos Receive ◀─ Thanos Query ◀─ Thanos Ruler ─▶ Alertmanager

With N Collectors the gateway routes each agent to one of them (gateway/shards.py);
the sharded and thanos topologies differ only past the Collectors. The sharded one can
keep a spare Collector, scraped but not routed to, for `Topology.resize` to add.
`stack/local.py` and `stack/thanos_stack.py` start the processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stack.local import LocalStack, Process, collector_binary, prometheus_binary
from stack.thanos_stack import thanos_stack

TOPOLOGIES = ("single", "sharded", "thanos")
THANOS_SHARDS = 2
"""prometheus/shard-K-of-2.yml."""


@dataclass
class Topology:
    """A running topology: its processes and where to read its figures."""

    name: str
    collectors: int
    pids: dict[str, int]
    """Every process of the pipeline by component (collector-0, prometheus-shard-1, ...)."""
    gateway_endpoint: str
    """Where agents send OTLP/gRPC (plaintext)."""
    query_url: str
    """Where PromQL sees every series: the Prometheus, or Thanos Query."""
    scrapers: dict[str, str]
    """Each Prometheus (shard) by component: its API, which says how its scrapes went."""
    stores: dict[str, str]
    """Each TSDB (Prometheus, shard, Thanos Receive) by component: its own /metrics."""
    target_names: dict[str, str]
    """Scrape target address → component, for the scrape figures."""
    routed: list[tuple[str, str]]
    """The Collectors the gateway routes to, in its GATEWAY_COLLECTOR_ENDPOINT order:
    (OTLP address, scrape target address), for gateway.shards.ShardMap."""
    resize: Callable[[], dict[str, Any]] | None = None
    """Route to the spare Collector too: restart the gateway with N + 1 Collectors (the
    sharded topology with a spare); returns what changed."""


def _component(process: Process) -> str:
    # LocalStack names its first Collector "collector"; number them all.
    return "collector-0" if process.name == "collector" else process.name


def _collector_targets(stack: LocalStack) -> dict[str, str]:
    names = {}
    for index, ports in enumerate(stack.collector_ports):
        names[f"127.0.0.1:{ports.prometheus}"] = f"collector-{index}"
        names[f"127.0.0.1:{ports.telemetry}"] = f"collector-{index} telemetry"
    names[f"127.0.0.1:{stack.ports.gateway_metrics}"] = "gateway"
    return names


def _routed(stack: LocalStack, count: int) -> list[tuple[str, str]]:
    return [
        (f"127.0.0.1:{ports.otlp}", f"127.0.0.1:{ports.prometheus}")
        for ports in stack.collector_ports[:count]
    ]


@contextmanager
def running(
    name: str,
    run_dir: Path,
    tenants_file: Path,
    collectors: int,
    report: Callable[[str], None] = print,
    spare: bool = False,
) -> Iterator[Topology]:
    """Start topology `name` (one of TOPOLOGIES) with `collectors` Collectors (the
    single topology: 1), yield it once every process is ready, stop it on exit.
    `spare` (sharded only): one more Collector, for `Topology.resize`."""
    if name == "thanos":
        with thanos_stack(
            run_dir,
            tenants_file,
            lanes=1,
            shards=THANOS_SHARDS,
            collectors_per_lane=collectors,
            report=report,
        ) as thanos:
            lane = thanos.lanes[0]
            targets = _collector_targets(lane)
            stores = {}
            for shard in thanos.shards:
                targets[shard.address] = shard.process.name
                stores[shard.process.name] = f"{shard.url}/metrics"
            receive_url = f"http://127.0.0.1:{thanos.receive.http_port}"
            stores["thanos-receive"] = f"{receive_url}/metrics"
            targets[f"127.0.0.1:{thanos.receive.http_port}"] = "thanos-receive"
            targets[f"127.0.0.1:{thanos.query.http_port}"] = "thanos-query"
            targets[f"127.0.0.1:{thanos.ruler.http_port}"] = "thanos-rule"
            yield Topology(
                name=name,
                collectors=collectors,
                pids={_component(p): p.popen.pid for p in thanos.processes()},
                gateway_endpoint=lane.gateway_grpc_endpoint,
                query_url=thanos.query.url,
                scrapers={shard.process.name: shard.url for shard in thanos.shards},
                stores=stores,
                target_names=targets,
                routed=_routed(lane, collectors),
            )
        return
    count = 1 if name == "single" else collectors
    spares = 1 if spare and name == "sharded" else 0
    stack = LocalStack(run_dir, tenants_file, collectors=count + spares)
    try:
        started = stack.start_collectors(collector_binary())
        for process in started:
            stack.wait_ready(process)
        routed = ",".join(stack.collector_endpoints.split(",")[:count])
        gateway = stack.start_gateway({"GATEWAY_COLLECTOR_ENDPOINT": routed})
        stack.wait_ready(gateway)
        stack.wait_ready(stack.start_prometheus(prometheus_binary()))
        report(f"{name}: {count} Collector(s) (+{spares} spare), gateway, Prometheus ready")
        targets = _collector_targets(stack)
        targets[f"127.0.0.1:{stack.ports.prometheus}"] = "prometheus"
        # The spare is counted from the resize on.
        topology = Topology(
            name=name,
            collectors=count,
            pids={_component(p): p.popen.pid for p in stack.processes if p not in started[count:]},
            gateway_endpoint=stack.gateway_grpc_endpoint,
            query_url=stack.prometheus_url,
            scrapers={"prometheus": stack.prometheus_url},
            stores={"prometheus": f"{stack.prometheus_url}/metrics"},
            target_names=targets,
            routed=_routed(stack, count),
        )
        if spares:
            topology.resize = lambda: _add_spare(stack, topology, started[count])
        yield topology
    finally:
        stack.stop_all()


def _add_spare(stack: LocalStack, topology: Topology, spare: Process) -> dict[str, Any]:
    """Restart the gateway with every Collector, the spare included."""
    old = next(p for p in stack.processes if p.name == "gateway")
    stack.stop(old)
    stopped = time.time()
    gateway = stack.start_gateway()  # GATEWAY_COLLECTOR_ENDPOINT: all of them
    stack.wait_ready(gateway)
    topology.pids["gateway"] = gateway.popen.pid
    topology.pids[_component(spare)] = spare.popen.pid
    topology.collectors += 1
    topology.routed = _routed(stack, topology.collectors)
    return {
        "gateway_stopped_at": stopped,
        "gateway_ready_after_s": time.time() - stopped,
        "spare": _component(spare),
        "spare_metrics": f"http://127.0.0.1:{stack.collector_ports[-1].prometheus}/metrics",
    }
