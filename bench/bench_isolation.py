"""Tenant B's exports while tenant A (or a stranger) attacks the pipeline.

Run: `.venv/bin/python -m bench.bench_isolation` (about 3 minutes; `--quick`: 1.5) or
`make bench-isolation`. Starts the real Collector and gateway (default settings, but
the fleet's last-seen series every second instead of every 10, so that a stall shows
within a phase) with two tenants, A and B. Then, for a quiet baseline and each attack
of bench/isolation_attacks.py, from a freshly restarted gateway and Collector:

1. the attack starts (A's key, or no credential at all);
2. after a second, B exports from a process of its own, as a connector agent does
   (21 points, OTLP/gRPC, a 5 s deadline, no retries) at 10 requests/s, open loop,
   for the phase (10 s; `--quick` 5 s);
3. the attack stops; up to five reads of the Collector's /metrics say whether B's
   series are there: its counter `connector_errors_total`, its `target_info`, and its
   last-seen series from the gateway, fresh (at most 3 s older than B's last export).

Per phase: what A got, B's acceptance (OK answers / calls), B's p50 and p99 latency
over all its calls (a refused call counts with the time it took), what is wrong with
B's series in the Collector, the Collector's memory, and whether B was unharmed (at
least 99 % accepted, a p99 at most twice the quiet one, all its series). Results:
bench/results/isolation.json; the table goes to docs/reliability.md, "Hostile
tenants". Nothing here asserts a figure.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    Gauge,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from bench import isolation_attacks as attacks
from bench.procstat import status_field
from gateway import tenants
from stack.local import REPO, LocalStack, Process, collector_binary

RESULTS = REPO / "bench" / "results" / "isolation.json"
RUN_DIR = REPO / ".run" / "bench-isolation"
B_RATE = 10.0
"""B's requests per second: half its rate limit (20/s)."""
B_DEADLINE = 5.0
LEAD_SECONDS = 1.0
FRESH_SECONDS = 3.0
B_SERVICE, B_INSTANCE = "b-connector", "b-1"
GATEWAY_ENV = {"GATEWAY_FLEET_SERIES_INTERVAL_SECONDS": "1"}
PHASES: tuple[tuple[str, attacks.Attack | None], ...] = (
    ("quiet (no attack)", None),
    ("gzip members (8 MB, 419k empty members)", attacks.gzip_members),
    ("big JSON (7.5 MB)", attacks.big_json),
    ("refused-points gzip (10k points) at 20/s", attacks.refused_points),
    ("anonymous header-only gRPC calls (1,030)", attacks.header_only_grpc),
    ("slow HTTP uploads (8 x 8 MiB announced, 1 byte sent)", attacks.slow_uploads),
    ("huge resource (28k attributes, 7.2 MB)", attacks.huge_resource),
    ("forged contract type (gauge connector_errors_total)", attacks.forged_type),
    ("bloated fleet resource (3 x 25k attributes)", attacks.bloated_fleet),
    ("bad attribute key (`.`, `-`, fullwidth)", attacks.bad_attribute_key),
)


# -- B: a connector agent, in a process of its own ----------------------------------------


def b_request(index: int) -> bytes:
    """B's export number `index`: the connector contract's 7 metrics x 3 tables."""
    now = time.time_ns()
    tables = [{"table": f"t{t}"} for t in range(3)]

    def counter(name: str, unit: str) -> Metric:
        points = [
            NumberDataPoint(
                as_int=index * 10 + 1,
                start_time_unix_nano=now - 10**12,
                time_unix_nano=now,
                attributes=attacks.kvs(t),
            )
            for t in tables
        ]
        cumulative = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
        total = Sum(data_points=points, is_monotonic=True, aggregation_temporality=cumulative)
        return Metric(name=name, unit=unit, sum=total)

    def gauge(name: str, unit: str, value: float) -> Metric:
        points = [
            NumberDataPoint(as_double=value, time_unix_nano=now, attributes=attacks.kvs(t))
            for t in tables
        ]
        return Metric(name=name, unit=unit, gauge=Gauge(data_points=points))

    metrics = [
        counter("connector.bytes_sent", "By"),
        counter("connector.records_sent", "{record}"),
        counter("connector.queries_processed", "{query}"),
        counter("connector.errors", "{error}"),
        gauge("connector.uptime", "s", float(index)),
        gauge("connector.connected", "", 1.0),
        gauge("connector.certificate_expiry_days", "d", 90.0),
    ]
    resource = Resource(
        attributes=attacks.kvs(
            {
                "service.name": B_SERVICE,
                "service.instance.id": B_INSTANCE,
                "agent.type": "connector",
                "host.name": "b-host",
            }
        )
    )
    request = ExportMetricsServiceRequest(
        resource_metrics=[
            ResourceMetrics(resource=resource, scope_metrics=[ScopeMetrics(metrics=metrics)])
        ]
    )
    return request.SerializeToString()


async def victim(target: str, key: str, seconds: float, rate: float) -> list[tuple[float, str]]:
    """B's calls, open loop: (seconds, status) of each."""
    results: list[tuple[float, str]] = []
    metadata = (("authorization", f"Bearer {key}"),)
    async with grpc.aio.insecure_channel(target) as channel:
        export = channel.unary_unary(attacks.EXPORT, None, None)

        async def one(index: int) -> None:
            began = time.perf_counter()
            try:
                await export(b_request(index), metadata=metadata, timeout=B_DEADLINE)
                status = "OK"
            except grpc.aio.AioRpcError as exc:
                status = exc.code().name
            results.append((time.perf_counter() - began, status))

        started = time.monotonic()
        tasks = []
        for index in range(int(seconds * rate)):
            await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(index)))
        await asyncio.gather(*tasks)
    return results


# -- the stack -------------------------------------------------------------------------------


def collector_lines(stack: LocalStack, pattern: re.Pattern[str]) -> list[str] | None:
    """Lines of the Collector's prometheus exporter matching `pattern` (read as a stream:
    a huge resource makes lines of megabytes); None if it does not answer."""
    url = f"http://127.0.0.1:{stack.collector_ports[0].prometheus}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return [
                line.decode("utf-8", "replace")
                for line in response
                if pattern.search(line.decode("utf-8", "replace"))
            ]
    except OSError:
        return None


B_SERIES = re.compile(
    rf'^(connector_errors_total|connector_last_seen_timestamp_seconds|target_info)\{{.*instance="{B_INSTANCE}"'
)


def b_problems(stack: LocalStack, b_ended: float) -> list[str]:
    """What is wrong with B's series in one read of the Collector's /metrics; B's last
    export was at `b_ended` (Unix time)."""
    lines = collector_lines(stack, B_SERIES)
    if lines is None:
        return ["Collector /metrics unreadable"]
    problems = []
    if not any(line.startswith("connector_errors_total{") for line in lines):
        problems.append("counter missing")
    if not any(line.startswith("target_info{") for line in lines):
        problems.append("target_info missing")
    seen = [
        float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith("connector_last_seen_timestamp_seconds{")
    ]
    if not seen:
        problems.append("last-seen missing")
    elif b_ended - max(seen) > FRESH_SECONDS:
        problems.append("last-seen stale")
    return problems


def b_in_collector(stack: LocalStack, b_ended: float, reads: int = 5, within: float = 5.0) -> str:
    """What is wrong with B's series in the Collector, in how many of up to `reads`
    reads within `within` seconds (a name claimed with two types loses one of them at
    random on each scrape; a huge resource makes one read take seconds); "ok" when
    nothing is."""
    seen: dict[str, int] = {}
    deadline = time.monotonic() + within
    done = 0
    while done < reads and (done == 0 or time.monotonic() < deadline):
        for problem in b_problems(stack, b_ended):
            seen[problem] = seen.get(problem, 0) + 1
        done += 1
        time.sleep(0.3)
    return ", ".join(f"{problem} ({count}/{done})" for problem, count in seen.items()) or "ok"


def rss_mib(process: Process) -> float:
    """Resident memory of a process, MiB."""
    return status_field(process.popen.pid, "VmRSS") / 1024


def reset(stack: LocalStack, collector: Process, gateway: Process) -> None:
    """A fresh Collector and gateway (and no fleet state): each attack from scratch."""
    stack.restart(collector)
    stack.wait_ready(collector, timeout=60)
    (stack.run_dir / "gateway-fleet-state.json").unlink(missing_ok=True)
    stack.restart(gateway)
    stack.wait_ready(gateway, timeout=60)


# -- one phase -------------------------------------------------------------------------------


async def phase(
    stack: LocalStack, keys: dict[str, str], attack: attacks.Attack | None, seconds: float
) -> dict[str, Any]:
    """B's figures under `attack` (None: quiet)."""
    grpc_target = stack.gateway_grpc_endpoint.removeprefix("http://")
    stop = asyncio.Event()
    target = attacks.Target(grpc_target, stack.gateway_http_url, keys["alpha"])
    attacking = asyncio.create_task(attack(target, stop)) if attack else None
    await asyncio.sleep(LEAD_SECONDS)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.bench_isolation", "--victim", grpc_target,
        "--key", keys["bravo"], "--seconds", str(seconds),
        stdout=subprocess.PIPE, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    out, _ = await process.communicate()
    b_ended = time.time()
    calls: list[tuple[float, str]] = json.loads(out)
    stop.set()
    got = "-"
    if attacking is not None:
        try:
            got = await asyncio.wait_for(attacking, 10)
        except TimeoutError:
            got = "(still running at the end)"
    b_state = await asyncio.to_thread(b_in_collector, stack, b_ended)
    latencies = sorted(seconds for seconds, _ in calls)
    accepted = sum(status == "OK" for _, status in calls)
    refusals: dict[str, int] = {}
    for _, status in calls:
        if status != "OK":
            refusals[status] = refusals.get(status, 0) + 1
    return {
        "a_got": got,
        "b_calls": len(calls),
        "b_accepted": accepted / len(calls) if calls else 0.0,
        "b_refusals": refusals,
        "b_p50_ms": 1000 * statistics.quantiles(latencies, n=100)[49] if calls else None,
        "b_p99_ms": 1000 * statistics.quantiles(latencies, n=100)[98] if calls else None,
        "b_in_collector": b_state,
    }


def judge(rows: list[dict[str, Any]]) -> None:
    """Mark each row with whether B kept what it must: at least 99 % accepted, a p99 at
    most twice the quiet phase's, and all its series."""
    quiet = next((row for row in rows if row["attack"] == PHASES[0][0]), None)
    for row in rows:
        row["meets_aim"] = (
            row["b_accepted"] >= 0.99
            and (quiet is None or row["b_p99_ms"] <= 2 * quiet["b_p99_ms"])
            and row["b_in_collector"] == "ok"
        )


def print_table(rows: list[dict[str, Any]]) -> None:
    """The table of docs/reliability.md, "Hostile tenants"."""
    print(
        "\n| attack | what A got | B accepted | B p50 ms | B p99 ms "
        "| B's series in the Collector | Collector RSS MiB | B unharmed |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        refusals = ", ".join(f"{k} {v}" for k, v in row["b_refusals"].items())
        print(
            f"| {row['attack']} | {row['a_got']} | {100 * row['b_accepted']:.1f} %"
            f"{f' ({refusals})' if refusals else ''} | {row['b_p50_ms']:.0f} | "
            f"{row['b_p99_ms']:.0f} | {row['b_in_collector']} | {row['collector_rss_mib']:.0f} "
            f"| {'yes' if row['meets_aim'] else '**no**'} |"
        )


def run(quick: bool, only: list[str]) -> list[dict[str, Any]]:
    """Every phase, one after the other, on one stack."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    tenants_file = RUN_DIR / "tenants.json"
    table = tenants.TenantTable()
    keys = {}
    for name in ("alpha", "bravo"):
        table, keys[name] = tenants.add_key(table, name)
    tenants.save(tenants_file, table)
    stack = LocalStack(RUN_DIR, tenants_file=tenants_file)
    rows = []
    try:
        collector = stack.start_collector(collector_binary())
        stack.wait_ready(collector, timeout=60)
        gateway = stack.start_gateway(GATEWAY_ENV)
        stack.wait_ready(gateway, timeout=60)
        for name, attack in PHASES:
            if only and not any(word in name for word in only):
                continue
            reset(stack, collector, gateway)
            began = time.monotonic()
            row = {"attack": name, **asyncio.run(phase(stack, keys, attack, 5 if quick else 10))}
            row["collector_rss_mib"] = rss_mib(collector)
            rows.append(row)
            print(
                f"{name}: B {100 * row['b_accepted']:.1f} % accepted, p50 "
                f"{row['b_p50_ms']:.0f} ms, p99 {row['b_p99_ms']:.0f} ms; "
                f"B in the Collector: {row['b_in_collector']}; A got {row['a_got']} "
                f"({time.monotonic() - began:.0f} s)",
                flush=True,
            )
    finally:
        stack.stop_all()
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the phases (or, with --victim, be B for one phase)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 s phases instead of 10")
    parser.add_argument("--only", default="", help="comma-separated words of attack names")
    parser.add_argument("--victim", metavar="HOST:PORT", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=10.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.victim:
        calls = asyncio.run(victim(args.victim, args.key, args.seconds, B_RATE))
        print(json.dumps(calls))
        return 0
    started = time.monotonic()
    rows = run(args.quick, [w for w in args.only.split(",") if w])
    judge(rows)
    print_table(rows)
    result = {
        "benchmark": "bench_isolation",
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": {"cpus": os.cpu_count(), "load": os.getloadavg()},
        "b": {"rate_per_s": B_RATE, "deadline_s": B_DEADLINE, "points_per_request": 21},
        "gateway_env": GATEWAY_ENV,
        "phases": rows,
    }
    if not args.only:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    saved = f"figures in {RESULTS}" if not args.only else "not saved: --only"
    print(f"\n({time.monotonic() - started:.0f} s; {saved})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
