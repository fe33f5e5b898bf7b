"""Freshness: from an agent's counter increment to the new value in Prometheus.

Run: `.venv/bin/python -m bench.bench_freshness` (about 5 minutes; `--quick`: about
1 minute, too few samples for a p99). The real stack runs as processes on free ports
(Collector, gateway, Prometheus from the repository's configuration files, a tenants
file with one key); the agents are `otel_agents.setup_metrics` instances in this
process, each with its own service.name and service.instance.id, exporting over
OTLP/gRPC to the gateway.

1. Gateway + Collector: an agent increments its counter and at once calls its
   MeterProvider's `force_flush()` (time taken just before the call) while a thread
   polls the Collector's Prometheus endpoint (/metrics, one kept-alive connection,
   every ~2 ms) until the new value shows. Two figures per sample: the export call
   (SDK collect and encode, gRPC to the gateway, the gateway's checks and its forward
   to the Collector, the Collector's answer) and the time until the value is on the
   Collector's endpoint, which adds the Collector's batch processor (`timeout: 200ms`
   in otel-collector/config.yaml). Samples are 0-1 s apart at random, so exports land
   at random phases of the batch timer.
2. End to end, two settings: the defaults (the library's export interval, 30 s;
   Prometheus's scrape interval from prometheus/prometheus.yml, 10 s), then 1 s export
   and 1 s scrape (a copy of prometheus.yml with only the scrape interval changed
   replaces the stack's link to it, and Prometheus reloads it). Many agents run at
   once, each with at most one increment in flight: an increment at a random moment,
   then one instant query to Prometheus every 50 ms (one query reads every agent's
   series) until it returns the new value; then a random pause of up to one export
   interval before that agent's next increment, so that each increment lands at a
   uniformly random phase of its agent's export cycle. An agent's exports keep a fixed
   offset to the scrapes (30 s is a multiple of 10 s), so the agents start spread over
   one scrape interval: their offsets cover it, as a fleet's do. A figure is
   time.monotonic() when the answer arrived minus time.monotonic() just after the
   increment: up to one poll period (50 ms) late.

Percentiles interpolate linearly between the two nearest samples (with 150 samples,
p99 lies between the third and second largest). Prints a table and writes
bench/results/bench_freshness.json; asserts nothing.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import random
import statistics
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from opentelemetry.metrics import Counter
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider

from gateway import tenants
from otel_agents import AgentConfig, AgentTelemetry, setup_metrics
from stack.local import (
    PROMETHEUS_CONFIG,
    LocalStack,
    StackError,
    collector_binary,
    prometheus_binary,
)

RESULTS = Path(__file__).resolve().parent / "results" / "bench_freshness.json"
TENANT = "bench"
MARKER = "bench.freshness.marker"  # Prometheus: bench_freshness_marker_total
HOP = "bench.freshness.hop"  # Prometheus: bench_freshness_hop_total
POLL_PROMETHEUS_S = 0.05
POLL_COLLECTOR_S = 0.002
HOP_TARGET_S = 0.050
TARGET_MARGIN_S = 2.0  # p99 target: export interval + scrape interval + this


# -- small helpers --------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between the nearest samples."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def spread(values: list[float]) -> dict[str, float]:
    """count, min, p50, p90, p99, max and mean of `values` (seconds)."""
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "min": min(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


class KeepAlive:
    """GET requests on one kept-alive HTTP connection (reconnects when it drops)."""

    def __init__(self, port: int) -> None:
        """A connection to 127.0.0.1:`port`."""
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)

    def get(self, path: str) -> bytes:
        """The body of a 200 answer; StackError otherwise."""
        try:
            return self._get(path)
        except (OSError, http.client.HTTPException):
            self.connection.close()  # the server closed the idle connection: once more
            return self._get(path)

    def _get(self, path: str) -> bytes:
        self.connection.request("GET", path)
        response = self.connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise StackError(f"GET {path} answered {response.status}: {body[:300]!r}")
        return body


def start_stack(run_dir: Path) -> tuple[LocalStack, str]:
    """Collector, gateway and Prometheus from the repository's files; a key of TENANT."""
    table, key = tenants.add_key(tenants.TenantTable(), TENANT)
    tenants.save(run_dir / "tenants.json", table)
    stack = LocalStack(run_dir, tenants_file=run_dir / "tenants.json")
    try:
        stack.wait_ready(stack.start_collector(collector_binary()))
        stack.wait_ready(stack.start_gateway())
        stack.wait_ready(stack.start_prometheus(prometheus_binary()))
    except BaseException:
        stack.stop_all()
        raise
    return stack, key


def start_agent(stack: LocalStack, key: str, service: str, export_ms: int | None) -> AgentTelemetry:
    """An agent set up with the library; `export_ms` None keeps the library's default."""
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": stack.gateway_grpc_endpoint,
        "OTEL_AGENTS_API_KEY": key,
        "OTEL_RESOURCE_ATTRIBUTES": f"service.instance.id={uuid.uuid4()}",
    }
    if export_ms is not None:
        env["OTEL_METRIC_EXPORT_INTERVAL"] = str(export_ms)
    config = AgentConfig.from_env(env)
    telemetry = setup_metrics(service, "connector", config=config, set_global=False)
    if not telemetry.enabled:
        raise StackError(f"setup_metrics refused the configuration of {service}")
    return telemetry


def prometheus_global(stack: LocalStack, name: str = "scrape_interval") -> str:
    """A global setting (e.g. '10s') of the running Prometheus, from its status API."""
    url = f"{stack.prometheus_url}/api/v1/status/config"
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (loopback)
        loaded = yaml.safe_load(json.loads(response.read())["data"]["yaml"])
    return str(loaded["global"][name])


def seconds_of(duration: str) -> float:
    """Seconds of a Prometheus duration like '10s', '1s' or '1m'."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0}
    for unit in ("ms", "s", "m"):
        if duration.endswith(unit):
            return float(duration[: -len(unit)]) * units[unit]
    raise ValueError(f"unexpected duration {duration!r}")


def set_scrape_interval(stack: LocalStack, interval: str) -> None:
    """Replace the stack's link to prometheus.yml with a copy scraping every `interval`,
    and reload Prometheus; the repository's file is not touched."""
    text = PROMETHEUS_CONFIG.read_text()
    if text.count("scrape_interval: 10s") != 1:
        raise StackError(f"{PROMETHEUS_CONFIG} no longer has one 'scrape_interval: 10s' line")
    config = stack.run_dir / "prometheus" / "prometheus.yml"
    config.unlink()
    config.write_text(text.replace("scrape_interval: 10s", f"scrape_interval: {interval}"))
    reload = urllib.request.Request(f"{stack.prometheus_url}/-/reload", method="POST")  # noqa: S310
    with urllib.request.urlopen(reload, timeout=10) as response:  # noqa: S310 (loopback)
        if response.status != 200:
            raise StackError(f"Prometheus reload answered {response.status}")
    if prometheus_global(stack) != interval:
        raise StackError(f"Prometheus did not take scrape_interval {interval}")


# -- 1. gateway + Collector ------------------------------------------------------------------


def collector_value(body: bytes, metric: str, job: str) -> float:
    """The value of `metric`{job=`job`} in a Prometheus text exposition, 0 if absent."""
    needle = f'job="{job}"'
    for line in body.decode().splitlines():
        if line.startswith(metric + "{") and needle in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def measure_hop(stack: LocalStack, key: str, samples: int, run_id: str) -> dict[str, Any]:
    """force_flush() → the value on the Collector's endpoint, `samples` times."""
    service = f"bench-hop-{run_id}"
    # The periodic export never fires during the measurement: only force_flush sends.
    telemetry = start_agent(stack, key, service, export_ms=3_600_000)
    provider = telemetry.meter_provider
    assert isinstance(provider, SdkMeterProvider)
    counter = telemetry.meter.create_counter(HOP)
    collector = KeepAlive(stack.ports.collector_prometheus)
    export_s: list[float] = []
    visible_s: list[float] = []
    try:
        for number in range(samples + 1):  # the first one creates the series: not counted
            counter.add(1)
            seen: list[float] = []
            poller = threading.Thread(
                target=_poll_collector, args=(collector, service, number + 1, seen), daemon=True
            )
            poller.start()
            started = time.perf_counter()
            provider.force_flush(timeout_millis=10_000)
            flushed = time.perf_counter()
            poller.join(timeout=10)
            if not seen:
                raise StackError(f"value {number + 1} of {service} never reached the Collector")
            if number > 0:
                export_s.append(flushed - started)
                visible_s.append(seen[0] - started)
            # A random gap over a multiple of the Collector's batch timeout (200 ms): the
            # next export lands at a uniformly random phase of the batch timer.
            time.sleep(random.uniform(0.0, 1.0))
    finally:
        telemetry.shutdown(timeout_s=5)
    return {
        "export_call_s": spread(export_s),
        "on_collector_s": spread(visible_s),
        "samples_on_collector_s": [round(value, 5) for value in visible_s],
    }


def _poll_collector(collector: KeepAlive, job: str, want: int, seen: list[float]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        body = collector.get("/metrics")
        now = time.perf_counter()
        if collector_value(body, "bench_freshness_hop_total", job) >= want:
            seen.append(now)
            return
        time.sleep(POLL_COLLECTOR_S)


# -- 2. end to end ---------------------------------------------------------------------------


@dataclass
class Agent:
    """One agent of a freshness run (set up at `start_at`) and its increment in flight."""

    service: str
    start_at: float
    telemetry: AgentTelemetry | None = None
    counter: Counter | None = None
    due: float = math.inf
    sent: int = 0
    in_flight_since: float | None = None
    latencies: list[float] = field(default_factory=list)


def measure_end_to_end(
    stack: LocalStack,
    key: str,
    *,
    label: str,
    export_ms: int | None,
    agents: int,
    samples: int,
    window_s: float,
    run_id: str,
) -> dict[str, Any]:
    """Increment → visible in Prometheus, with `agents` agents until `samples` increments
    were made or `window_s` passed; then wait for those in flight."""
    interval_s = (
        AgentConfig.from_env({}).export_interval_ms if export_ms is None else export_ms
    ) / 1000
    scrape = prometheus_global(stack)
    scrape_s = seconds_of(scrape)
    give_up_s = interval_s + scrape_s + 30
    prometheus = KeepAlive(stack.ports.prometheus)
    query = "/api/v1/query?" + urllib.parse.urlencode(
        {"query": f'bench_freshness_marker_total{{job=~"bench-fresh-{label}-.*-{run_id}"}}'}
    )
    started = time.monotonic()
    # An agent's exports and Prometheus's scrapes keep a fixed offset (the export
    # interval is a multiple of the scrape interval), which adds the same delay to
    # each of its samples: the agents start spread over one scrape interval so that
    # their offsets cover it, as in a fleet.
    slice_s = scrape_s / agents
    fleet = [
        Agent(f"bench-fresh-{label}-{n}-{run_id}", started + (n + random.random()) * slice_s)
        for n in range(agents)
    ]
    made, lost = 0, 0
    try:
        while True:
            tick = time.monotonic()
            accepting = made < samples and tick - started < window_s
            for agent in fleet:
                if agent.telemetry is None and tick >= agent.start_at:
                    agent.telemetry = start_agent(stack, key, agent.service, export_ms)
                    agent.counter = agent.telemetry.meter.create_counter(MARKER)
                    # The first increment at a random moment before its first export.
                    agent.due = time.monotonic() + random.uniform(0, interval_s)
                idle = agent.counter is not None and agent.in_flight_since is None
                if accepting and idle and tick >= agent.due:
                    assert agent.counter is not None
                    agent.counter.add(1)
                    agent.sent += 1
                    agent.in_flight_since = time.monotonic()
                    made += 1
                    accepting = made < samples
            in_flight = [a for a in fleet if a.in_flight_since is not None]
            if not in_flight and not accepting:
                break
            answer = json.loads(prometheus.get(query))["data"]["result"]
            now = time.monotonic()
            values = {s["metric"]["job"]: float(s["value"][1]) for s in answer}
            for agent in in_flight:
                assert agent.in_flight_since is not None
                if values.get(agent.service, 0.0) >= agent.sent:
                    agent.latencies.append(now - agent.in_flight_since)
                elif now - agent.in_flight_since > give_up_s:
                    lost += 1
                else:
                    continue
                agent.in_flight_since = None
                # A pause of up to one export interval: the next increment falls at a
                # uniformly random phase of the agent's export cycle.
                agent.due = now + random.uniform(0, interval_s)
            time.sleep(max(0.0, tick + POLL_PROMETHEUS_S - time.monotonic()))
    finally:
        for agent in fleet:
            if agent.telemetry is not None:
                agent.telemetry.shutdown(timeout_s=5)
    latencies = [value for agent in fleet for value in agent.latencies]
    return {
        "export_interval_s": interval_s,
        "scrape_interval": scrape,
        "agents": agents,
        "lost": lost,
        "target_p99_s": interval_s + scrape_s + TARGET_MARGIN_S,
        "duration_s": time.monotonic() - started,
        "latency_s": spread(latencies),
        "samples_s": [round(value, 4) for value in latencies],
    }


# -- report ----------------------------------------------------------------------------------


def print_report(hop: dict[str, Any], settings: dict[str, dict[str, Any]]) -> None:
    """The figures, readable."""
    print("\nGateway + Collector (force_flush() → value on the Collector's /metrics)")
    print(f"  {'':<34}{'n':>5}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for key, label in (
        ("export_call_s", "export call (force_flush returns)"),
        ("on_collector_s", "value on the Collector's endpoint"),
    ):
        row = hop[key]
        print(
            f"  {label:<34}{row['count']:>5}{row['p50'] * 1000:9.1f}"
            f"{row['p99'] * 1000:9.1f}{row['max'] * 1000:9.1f}"
        )
    print(f"  target: value on the Collector's endpoint <= {HOP_TARGET_S * 1000:.0f} ms")

    print("\nIncrement → new value from a Prometheus instant query (polled every 50 ms)")
    print(
        f"  {'export / scrape':<20}{'agents':>7}{'n':>5}{'lost':>5}{'p50 s':>8}{'p99 s':>8}"
        f"{'max s':>8}{'target p99':>12}"
    )
    for result in settings.values():
        row = result["latency_s"]
        name = f"{result['export_interval_s']:g} s / {result['scrape_interval']}"
        if row["count"] == 0:
            print(f"  {name:<20}{result['agents']:>7}{0:>5}{result['lost']:>5}  (no samples)")
            continue
        print(
            f"  {name:<20}{result['agents']:>7}{row['count']:>5}{result['lost']:>5}"
            f"{row['p50']:8.2f}{row['p99']:8.2f}{row['max']:8.2f}"
            f"{'<= ' + format(result['target_p99_s'], 'g') + ' s':>12}"
        )


def main() -> None:
    """Start the stack, run the three measurements, print and save the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (~1 min)")
    args = parser.parse_args()
    quick = args.quick
    run_id = uuid.uuid4().hex[:6]
    started = time.monotonic()
    run_dir = Path(tempfile.mkdtemp(prefix="bench-freshness-"))
    stack, key = start_stack(run_dir)
    print(f"stack up in {time.monotonic() - started:.0f} s (logs in {run_dir})")
    settings: dict[str, dict[str, Any]] = {}
    try:
        hop = measure_hop(stack, key, samples=20 if quick else 60, run_id=run_id)
        print(f"gateway + Collector done ({time.monotonic() - started:.0f} s)")
        # Defaults: the library's export interval, the repository's scrape interval.
        settings["defaults"] = measure_end_to_end(
            stack,
            key,
            label="defaults",
            export_ms=None,
            agents=8 if quick else 30,
            samples=8 if quick else 150,
            window_s=30 if quick else 200,
            run_id=run_id,
        )
        print(f"defaults done ({time.monotonic() - started:.0f} s)")
        set_scrape_interval(stack, "1s")
        settings["1s"] = measure_end_to_end(
            stack,
            key,
            label="fast",
            export_ms=1000,
            agents=5,
            samples=20 if quick else 100,
            window_s=15 if quick else 90,
            run_id=run_id,
        )
    finally:
        stack.stop_all()
    print_report(hop, settings)
    result = {
        "benchmark": "bench_freshness",
        "quick": quick,
        "poll_prometheus_s": POLL_PROMETHEUS_S,
        "poll_collector_s": POLL_COLLECTOR_S,
        "gateway_collector": {**hop, "target_s": HOP_TARGET_S},
        "end_to_end": settings,
        "logs": str(run_dir),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n({time.monotonic() - started:.0f} s; figures in {RESULTS})")


if __name__ == "__main__":
    main()
