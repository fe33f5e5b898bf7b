"""The pipeline past one Prometheus, as processes: sharded Prometheus servers and Thanos.

    agents ─▶ gateway ─▶ Collector                  one lane; there are N lanes
    Collectors ─(one shard each, hashmod)─▶ Prometheus shards ─remote write─▶ Receive
    gateways ─(every shard)─▶ shards, which run rules/agents.yml
    Ruler (rules/pipeline.yml, dashboards.yml) ─▶ Query ─▶ Receive and the Ruler's own
    shards and Ruler ─alerts─▶ Alertmanager

A lane is a gateway and the Collectors it forwards to (`collectors_per_lane`, 1 by
default; with several, the gateway routes each agent to one of them). The
Collectors are numbered across lanes (lane 0's first), and Collector k listens on
a port that shard k (mod the number of shards) scrapes. Every component runs from the
repository's files (docs/scaling.md, "Past one Prometheus"); used by
tests/e2e/test_thanos.py and by `python -m scripts.thanos_demo`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from stack.local import (
    LocalStack,
    Process,
    alertmanager_binary,
    collector_binary,
    prometheus_binary,
)
from stack.shards import (
    GLOBAL_RULE_FILES,
    RULES_DIR,
    Shard,
    evaluation_interval,
    port_on_shard,
    shard_config,
    start_shard,
)
from stack.thanos import (
    Query,
    Receive,
    Ruler,
    start_query,
    start_receive,
    start_ruler,
    thanos_binary,
)


@dataclass
class ThanosStack:
    """Every process of the topology, by role."""

    core: LocalStack
    """Shards, Thanos, Alertmanager, and whatever a caller adds (`core.start_process`)."""
    lanes: list[LocalStack]
    """A gateway and its Collectors each."""
    receive: Receive
    query: Query
    ruler: Ruler
    shards: list[Shard] = field(default_factory=list)

    @property
    def alertmanager_url(self) -> str:
        """Alertmanager, where the shards and the Ruler send alerts."""
        return self.core.alertmanager_url

    def processes(self) -> list[Process]:
        """Every process started, in start order."""
        return [p for lane in self.lanes for p in lane.processes] + list(self.core.processes)

    def stop_all(self) -> None:
        """Stop what was started: the core's newest first (agents, shards, Thanos), then lanes."""
        self.core.stop_all()
        for lane in self.lanes:
            lane.stop_all()


def _lane(
    run_dir: Path, tenants_file: Path, index: int, shards: int, collectors: int
) -> LocalStack:
    first = index * collectors
    return LocalStack(
        run_dir / f"lane-{index}",
        tenants_file=tenants_file,
        collectors=collectors,
        collector_prometheus_ports=[
            port_on_shard((first + number) % shards, shards) for number in range(collectors)
        ],
    )


@contextmanager
def thanos_stack(
    run_dir: Path,
    tenants_file: Path,
    *,
    lanes: int = 2,
    shards: int = 2,
    collectors_per_lane: int = 1,
    extra_collector_targets: Sequence[str] = (),
    gateway_env: Mapping[str, str] | None = None,
    report: Callable[[str], None] = lambda message: None,
) -> Iterator[ThanosStack]:
    """Start the topology, yield it once every component is ready, stop it on exit.

    `extra_collector_targets` are listed in targets/collector.json beside the lanes'
    Collectors (a Collector that is down, for a test). StackError if a binary is
    missing or a component does not get ready; what was started is stopped then too.
    """
    for index in range(shards):
        shard_config(index, shards)  # StackError now, not after starting the rest
    binaries = {
        "collector": collector_binary(),
        "prometheus": prometheus_binary(),
        "alertmanager": alertmanager_binary(),
        "thanos": thanos_binary(),
    }
    started = time.monotonic()
    core = LocalStack(run_dir, tenants_file=tenants_file)
    stack: ThanosStack | None = None
    lane_stacks: list[LocalStack] = []
    try:
        # Everything that waits for nothing else starts at once; readiness is
        # checked after, so the starts overlap.
        for index in range(lanes):
            lane = _lane(run_dir, tenants_file, index, shards, collectors_per_lane)
            lane_stacks.append(lane)
            lane.start_collectors(binaries["collector"])
            lane.start_gateway(gateway_env)
        alertmanager = core.start_alertmanager(binaries["alertmanager"])
        receive = start_receive(core, binaries["thanos"])
        query = start_query(core, binaries["thanos"], [receive.store_address])
        for process in (receive.process, query.process):
            core.wait_ready(process)
            report(f"{process.name} ready, {time.monotonic() - started:.1f} s after the start")
        # A Ruler evaluating before its Query reaches a store counts a failed
        # evaluation of each rule ("No StoreAPIs available").
        query.wait_stores([receive.store_address])
        ruler = start_ruler(
            core,
            binaries["thanos"],
            query,
            [RULES_DIR / name for name in GLOBAL_RULE_FILES],
            evaluation_interval(),
            alertmanager_url=core.alertmanager_url,
        )
        query.set_stores([receive.store_address, ruler.store_address])
        stack = ThanosStack(core, lane_stacks, receive, query, ruler)
        targets = {
            "collector": [
                *(
                    f"127.0.0.1:{collector.prometheus}"
                    for lane in lane_stacks
                    for collector in lane.collector_ports
                ),
                *extra_collector_targets,
            ],
            "collector-telemetry": [
                f"127.0.0.1:{collector.telemetry}"
                for lane in lane_stacks
                for collector in lane.collector_ports
            ],
            "gateway": [f"127.0.0.1:{lane.ports.gateway_metrics}" for lane in lane_stacks],
            "alertmanager": [f"127.0.0.1:{core.ports.alertmanager}"],
            "thanos": [
                f"127.0.0.1:{port}"
                for port in (receive.http_port, query.http_port, ruler.http_port)
            ],
        }
        for index in range(shards):
            stack.shards.append(
                start_shard(
                    core, binaries["prometheus"], index, shards, receive.remote_write_url, targets
                )
            )
        for lane in lane_stacks:
            for process in lane.processes:
                lane.wait_ready(process)
                report(
                    f"{lane.run_dir.name}: {process.name} ready, "
                    f"{time.monotonic() - started:.1f} s after the start"
                )
        for process in (alertmanager, ruler.process, *(s.process for s in stack.shards)):
            core.wait_ready(process)
            report(f"{process.name} ready, {time.monotonic() - started:.1f} s after the start")
        query.wait_stores([receive.store_address, ruler.store_address])
        report("Thanos Query reaches Receive and the Ruler")
        yield stack
    finally:
        if stack is not None:
            stack.stop_all()
        else:
            core.stop_all()
            for lane in lane_stacks:
                lane.stop_all()
