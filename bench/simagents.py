"""Simulated agents: thousands of connectors and data agents exporting from one process.

Ten thousand real SDK instances would cost more CPU than the pipeline they load, so each
agent type's OTLP request is built once, by the real `otel_agents` instruments read with
an `InMemoryMetricReader` and encoded by the OTLP exporter's own encoder: the same
metric names, units, descriptions, scope, attributes and resource attributes as a real
agent. Before every send that template gets the agent's own `service.instance.id`, its
start time, the collection time, and values that grow with its uptime (cumulative
counters and histograms, as the SDK's cumulative temporality sends them). It goes out
over OTLP/gRPC with gzip, `authorization: Bearer <tenant key>` and a 10 s deadline, one
connection per agent, as the OpenTelemetry exporter does.

Each agent exports once per interval at its own phase (golden-ratio spacing, so any
number of agents is spread evenly over the interval). Like the SDK's periodic reader,
an agent never has two exports in flight: a send due while the previous one is still
running waits for it, and counts as late.

Run by `bench/scale/`, which drives it through stdin, one command per line:
`agents N` (run agents 0..N-1), `stats` (print one JSON line: totals since start and
the window since the previous `stats`, with every export of the window as
[start Unix time, latency s, agent index]), `identities` (one JSON line: each running
agent's tenant number and `service.instance.id`), `quit`. Standalone:
`.venv/bin/python -m bench.simagents --endpoint http://127.0.0.1:4317 --keys keys.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import math
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_agents.config import AgentConfig
from otel_agents.connector import ConnectorMetrics
from otel_agents.etl import EtlMetrics
from otel_agents.setup import build_resource
from otel_agents.telemetry import METER_NAME
from stack.pki import self_signed_file

EXPORT_PATH = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
VERSION = "2.4.1"
AGENTS_PER_TENANT = 10
CONNECTORS_PER_TENANT = 5
"""Agents 0-4 of each tenant are connectors, 5-9 data agents."""
EXPORT_TIMEOUT_S = 10.0
"""The OpenTelemetry exporter's default deadline (OTEL_EXPORTER_OTLP_TIMEOUT)."""
LATE_AFTER_S = 1.0
"""A send that starts this much after its due time is late."""
BESIDE_OWN_SERIES = 3
"""Series of each agent beside its own metrics' (docs/agents.md, "Series per agent"):
`target_info`, and the last-seen series the gateway sends under the agent's resource
to its Collector (`*_last_seen_seconds`, `*_last_seen_timestamp_seconds`)."""
GOLDEN = (math.sqrt(5) - 1) / 2
NS = 1_000_000_000


# -- templates: what one real agent of each type sends ----------------------------------


def _connector_activity(meter: Any, directory: Path) -> None:
    """200 queries and batches, and errors of two types: two from an upstream that timed
    out or was down (unavailable), one request it refused (rejected). 1.5 % errors, under
    ConnectorErrorRateHigh's 5 %: counters grow in proportion, so the ratio holds."""
    metrics = ConnectorMetrics(
        meter,
        version=VERSION,
        certificate_path=self_signed_file(directory / "connector.pem", 45, "connector.bench"),
    )
    metrics.set_connected(True)
    for _ in range(200):
        metrics.record_query()
        metrics.record_batch(1_000, 64_000)
    metrics.record_error("UNAVAILABLE")
    metrics.record_error("DEADLINE_EXCEEDED")
    metrics.record_error("INVALID_ARGUMENT")


FLOW_NAMES = tuple(
    f"{verb}_{noun}"
    for verb in ("sync", "load", "refresh", "compact")
    for noun in ("orders", "customers", "invoices", "inventory", "rates")
)
"""The data agent's 20 flows."""
TASK_NAMES = ("extract", "validate", "transform", "load", "publish")
"""The 5 tasks of every flow."""


def _data_agent_activity(meter: Any, directory: Path) -> None:
    """Every flow of FLOW_NAMES runs 2 to 10 times, 5 tasks a run: one run in ten of
    every fifth flow fails in `load` (10 %, under DataAgentFlowFailureRateHigh's 20 %),
    every third flow's `extract` retries once a run. Per-task detail off (the default)."""
    del directory
    metrics = EtlMetrics(meter, version=VERSION)
    metrics.status.set_connected(True)
    for number, flow in enumerate(FLOW_NAMES):
        failing = number % 5 == 0
        runs = 10 if failing else 2 + number % 4
        for run in range(runs):
            fails = failing and run == 0
            for task in TASK_NAMES:
                failed = fails and task == "load"
                retries = 1 if number % 3 == 0 and task == "extract" else 0
                state = "failed" if failed else "completed"
                metrics.record_task_finished(task, state, flow_name=flow, retries=retries)
                if failed:
                    break
            duration = 2.0 + (number * 37 + run * 11) % 400
            metrics.record_flow_finished(flow, "failed" if fails else "completed", duration)


AGENT_TYPES: dict[str, tuple[str, Callable[[Any, Path], None]]] = {
    "connector": ("data-connector", _connector_activity),
    "etl": ("data-agent", _data_agent_activity),
}
"""agent.type → (service.name, what the real instruments record before the template)."""


def build_template(agent_type: str, directory: Path) -> ExportMetricsServiceRequest:
    """The request a real agent of `agent_type` exports, from the real instruments."""
    service_name, activity = AGENT_TYPES[agent_type]
    resource = build_resource(AgentConfig(), service_name, agent_type, VERSION)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], resource=resource, shutdown_on_exit=False)
    activity(provider.get_meter(METER_NAME), directory)
    data = reader.get_metrics_data()
    provider.shutdown()
    if data is None:
        raise RuntimeError(f"the {agent_type} instruments produced no metrics")
    return encode_metrics(data)


def prometheus_series(request: ExportMetricsServiceRequest) -> int:
    """Series the request becomes in Prometheus, target_info excluded (a histogram
    point is one series per bucket plus _sum and _count)."""
    series = 0
    for resource_metrics in request.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                points = getattr(metric, kind).data_points if kind else []
                for point in points:
                    series += len(point.bucket_counts) + 2 if kind == "histogram" else 1
    return series


def data_points(request: ExportMetricsServiceRequest) -> int:
    """OTLP data points in the request."""
    total = 0
    for resource_metrics in request.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                total += len(getattr(metric, kind).data_points) if kind else 0
    return total


# -- per-agent values on a shared template -----------------------------------------------


@dataclass
class _Point:
    """A data point of the template, with what it held when the template was built."""

    point: Any
    role: str  # "counter", "uptime", "gauge", "histogram"
    value: float = 0.0
    is_int: bool = False
    count: int = 0
    total: float = 0.0
    buckets: tuple[int, ...] = ()
    busiest: int = 0


class Template:
    """One agent type's request, re-stamped for each agent just before it is serialized."""

    def __init__(self, agent_type: str, request: ExportMetricsServiceRequest) -> None:
        self.agent_type = agent_type
        self.request = request
        self.data_points = data_points(request)
        self.series = prometheus_series(request)
        resource = request.resource_metrics[0].resource
        self._instance = next(
            kv.value for kv in resource.attributes if kv.key == "service.instance.id"
        )
        self._points: list[_Point] = []
        for scope_metrics in request.resource_metrics[0].scope_metrics:
            for metric in scope_metrics.metrics:
                self._points.extend(self._slots(metric))

    @staticmethod
    def _slots(metric: Any) -> list[_Point]:
        kind = metric.WhichOneof("data")
        data = getattr(metric, kind)
        slots = []
        for point in data.data_points:
            if kind == "histogram":
                buckets = tuple(point.bucket_counts)
                busiest = max(range(len(buckets)), key=buckets.__getitem__)
                slots.append(
                    _Point(
                        point,
                        "histogram",
                        count=point.count,
                        total=point.sum,
                        buckets=buckets,
                        busiest=busiest,
                    )
                )
                continue
            is_int = point.WhichOneof("value") == "as_int"
            value = float(point.as_int if is_int else point.as_double)
            if kind == "sum" and data.is_monotonic:
                role = "counter"
            elif metric.name.endswith(".uptime"):
                role = "uptime"
            else:
                role = "gauge"
            slots.append(_Point(point, role, value=value, is_int=is_int))
        return slots

    def render(self, instance_id: str, started_ns: int, now_ns: int, scale: float) -> bytes:
        """The serialized request of one agent at `now_ns`.

        Counters and histograms grow with uptime (the template's values after the first
        minute, then proportionally), so every export carries larger cumulative totals.
        """
        self._instance.string_value = instance_id
        uptime = (now_ns - started_ns) / NS
        growth = scale * (1.0 + uptime / 60.0)
        for slot in self._points:
            point = slot.point
            point.time_unix_nano = now_ns
            if point.start_time_unix_nano:
                point.start_time_unix_nano = started_ns
            if slot.role == "counter":
                if slot.is_int:
                    point.as_int = int(slot.value * growth)
                else:
                    point.as_double = slot.value * growth
            elif slot.role == "uptime":
                point.as_double = uptime
            elif slot.role == "histogram" and slot.count:
                count = max(slot.count, int(slot.count * growth))
                buckets = list(slot.buckets)
                buckets[slot.busiest] += count - slot.count
                point.count = count
                point.sum = slot.total * count / slot.count
                point.bucket_counts[:] = buckets
        return self.request.SerializeToString()


# -- the agents and their schedule ---------------------------------------------------------


@dataclass
class Agent:
    """One simulated agent: its tenant's key, identity, phase and connection."""

    index: int
    template: Template
    authorization: tuple[tuple[str, str], ...]
    instance_id: str
    phase_s: float
    scale: float
    started_ns: int = 0
    call: Any = None
    channel: grpc.aio.Channel | None = None
    in_flight: bool = False
    pending_due: float | None = None


@dataclass
class Window:
    """What happened since the previous `stats` command."""

    started: float = field(default_factory=time.monotonic)
    sent: int = 0
    ok: int = 0
    points_sent: int = 0
    points: int = 0
    late: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    rejected_points: int = 0
    latencies: list[float] = field(default_factory=list)
    lateness: list[float] = field(default_factory=list)
    max_in_flight: int = 0
    exports: list[tuple[float, float, int]] = field(default_factory=list)
    """(start Unix time, latency s, agent index) of every export, for bench/scale/moments.py."""


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    last = len(ordered) - 1
    return {
        "p50": ordered[last // 2],
        "p99": ordered[round(last * 0.99)],
        "max": ordered[-1],
        "mean": statistics.fmean(ordered),
    }


class Fleet:
    """Every simulated agent, scheduled on one event loop."""

    def __init__(
        self,
        endpoint: str,
        keys: list[str],
        interval_s: float,
        templates: dict[str, Template],
        seed: int = 1,
    ) -> None:
        self.target = endpoint.removeprefix("http://")
        self.keys = keys
        self.interval_s = interval_s
        self.templates = templates
        self.random = random.Random(seed)
        self.agents: list[Agent] = []
        self.active = 0
        self.in_flight = 0
        self.totals = Window()
        self.window = Window()
        self._due: list[tuple[float, int]] = []
        self._wake = asyncio.Event()
        self._cpu_started = time.process_time()

    def _new_agent(self, index: int) -> Agent:
        tenant = index // AGENTS_PER_TENANT
        if tenant >= len(self.keys):
            raise ValueError(f"agent {index} needs tenant {tenant}, only {len(self.keys)} keys")
        kind = "connector" if index % AGENTS_PER_TENANT < CONNECTORS_PER_TENANT else "etl"
        return Agent(
            index=index,
            template=self.templates[kind],
            authorization=(("authorization", f"Bearer {self.keys[tenant]}"),),
            instance_id=str(uuid.UUID(int=self.random.getrandbits(128), version=4)),
            phase_s=(index * GOLDEN) % 1.0 * self.interval_s,
            scale=0.5 + self.random.random(),
        )

    def set_agents(self, count: int) -> None:
        """Run agents 0..count-1; a new one first exports at its phase in this interval
        or the next, so a step up ramps in over one interval."""
        now = time.monotonic()
        while len(self.agents) < count:
            self.agents.append(self._new_agent(len(self.agents)))
        for agent in self.agents[self.active : count]:
            agent.started_ns = time.time_ns()
            cycle_start = now - now % self.interval_s
            due = cycle_start + agent.phase_s
            heapq.heappush(self._due, (due if due >= now else due + self.interval_s, agent.index))
        self.active = count
        self._wake.set()

    async def run(self) -> None:
        """Send every due export, forever."""
        while True:
            if not self._due:
                self._wake.clear()
                await self._wake.wait()
                continue
            due, index = self._due[0]
            delay = due - time.monotonic()
            if delay > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                continue
            heapq.heappop(self._due)
            if index >= self.active:
                continue  # removed by a step down
            heapq.heappush(self._due, (due + self.interval_s, index))
            agent = self.agents[index]
            if agent.in_flight:
                agent.pending_due = due  # sent when the previous export returns
            else:
                self._start(agent, due)

    def _start(self, agent: Agent, due: float) -> None:
        lateness = time.monotonic() - due
        self.window.lateness.append(lateness)
        if lateness > LATE_AFTER_S:
            self.window.late += 1
            self.totals.late += 1
        agent.in_flight = True
        self.in_flight += 1
        self.window.max_in_flight = max(self.window.max_in_flight, self.in_flight)
        asyncio.get_running_loop().create_task(self._send(agent))

    async def _send(self, agent: Agent) -> None:
        if agent.channel is None:
            # A channel of its own per agent, and a subchannel pool of its own so that
            # gRPC does not share one connection between channels to the same address.
            agent.channel = grpc.aio.insecure_channel(
                self.target, options=[("grpc.use_local_subchannel_pool", 1)]
            )
            # Bytes in and out: the body is serialized by the template already.
            agent.call = agent.channel.unary_unary(
                EXPORT_PATH, request_serializer=None, response_deserializer=None
            )
        template = agent.template
        body = template.render(agent.instance_id, agent.started_ns, time.time_ns(), agent.scale)
        started = time.monotonic()
        started_wall = time.time()
        outcome = "OK"
        rejected = 0
        try:
            answer = await agent.call(
                body,
                metadata=agent.authorization,
                timeout=EXPORT_TIMEOUT_S,
                compression=grpc.Compression.Gzip,
            )
            rejected = ExportMetricsServiceResponse.FromString(
                answer
            ).partial_success.rejected_data_points
        except grpc.aio.AioRpcError as exc:
            outcome = exc.code().name
        latency = time.monotonic() - started
        for window in (self.window, self.totals):
            window.sent += 1
            window.points_sent += template.data_points
            window.rejected_points += rejected
            if outcome == "OK":
                window.ok += 1
                window.points += template.data_points
            else:
                window.errors[outcome] = window.errors.get(outcome, 0) + 1
        self.window.latencies.append(latency)
        self.window.exports.append((round(started_wall, 4), round(latency, 5), agent.index))
        agent.in_flight = False
        self.in_flight -= 1
        if agent.pending_due is not None and agent.index < self.active:
            due, agent.pending_due = agent.pending_due, None
            self._start(agent, due)

    def stats(self) -> dict[str, Any]:
        """Totals since start and the window since the previous call (which is reset)."""
        window, self.window = self.window, Window()
        seconds = time.monotonic() - window.started
        return {
            "agents": self.active,
            "cpu_seconds": time.process_time() - self._cpu_started,
            "totals": {
                "sent": self.totals.sent,
                "ok": self.totals.ok,
                "points_sent": self.totals.points_sent,
                "points": self.totals.points,
                "late": self.totals.late,
                "errors": dict(self.totals.errors),
                "rejected_points": self.totals.rejected_points,
            },
            "window": {
                "seconds": seconds,
                "sent": window.sent,
                "ok": window.ok,
                "points_sent": window.points_sent,
                "points": window.points,
                "late": window.late,
                "errors": window.errors,
                "rejected_points": window.rejected_points,
                "max_in_flight": window.max_in_flight,
                "latency_s": _percentiles(window.latencies),
                "lateness_s": _percentiles(window.lateness),
                "exports": window.exports,
            },
        }

    def identities(self) -> dict[str, Any]:
        """Each running agent's tenant number and `service.instance.id`, by index."""
        return {
            "identities": [
                [agent.index // AGENTS_PER_TENANT, agent.instance_id]
                for agent in self.agents[: self.active]
            ]
        }

    async def close(self) -> None:
        """Close every agent's connection."""
        for agent in self.agents:
            if agent.channel is not None:
                await agent.channel.close(grace=None)


def templates(directory: Path) -> dict[str, Template]:
    """The connector's and the data agent's templates."""
    return {kind: Template(kind, build_template(kind, directory)) for kind in AGENT_TYPES}


async def _commands(fleet: Fleet) -> None:
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        words = line.split()
        if not line or words[:1] == ["quit"]:
            return
        if words[:1] == ["agents"] and len(words) == 2:
            fleet.set_agents(int(words[1]))
        elif words[:1] == ["stats"]:
            print(json.dumps(fleet.stats()), flush=True)
        elif words[:1] == ["identities"]:
            print(json.dumps(fleet.identities()), flush=True)
        else:
            print(json.dumps({"error": f"unknown command {line.strip()!r}"}), flush=True)


async def main_async(args: argparse.Namespace) -> None:
    """Build the templates, then serve stdin commands until `quit` or end of input."""
    keys = json.loads(Path(args.keys).read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory() as directory:
        fleet = Fleet(args.endpoint, keys, args.interval, templates(Path(directory)))
    described = {
        kind: {
            "data_points": t.data_points,
            "series": t.series,
            "series_per_agent": t.series + BESIDE_OWN_SERIES,
        }
        for kind, t in fleet.templates.items()
    }
    print(json.dumps({"ready": True, "templates": described}), flush=True)
    if args.agents:
        fleet.set_agents(args.agents)
    sender = asyncio.create_task(fleet.run())
    try:
        await _commands(fleet)
    finally:
        sender.cancel()
        await fleet.close()


def main() -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True, help="gateway OTLP/gRPC, http://host:port")
    parser.add_argument("--keys", required=True, help="JSON list of tenant API keys")
    parser.add_argument("--interval", type=float, default=30.0, help="export interval, seconds")
    parser.add_argument("--agents", type=int, default=0, help="agents to start with")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
