"""Soak: the gateway and the Collector under steady load for a long time.

Run: `.venv/bin/python -m bench.bench_soak` (30 minutes; `--minutes N`; `--quick`: 2
minutes). Starts the real Collector and the gateway on free ports, then the Go load
generator (bench/loadgen) in an open loop at `--rate` requests/s of `--points` data
points (default 1,000 requests/s of 20 points: about half of one gateway process's
capacity on our 2-core machine), rotating over `--tenants` keys. Every `--interval` s it samples
the gateway's resident memory (VmRSS), open file descriptors (/proc/<pid>/fd), threads
and CPU (utime + stime over the interval, % of one core), the Collector's VmRSS and
CPU, and the gateway's requests by outcome. At the end it scans the gateway's and the
Collector's logs for errors and tracebacks. Writes bench/results/soak.json (the time
series plus start / end / peak of each figure and the memory trend) and prints a
table. Nothing here asserts anything.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.loadgen import LoadOptions, LoadResult, loadgen_binary, run_loadgen
from bench.procstat import cpu_seconds, open_fds, status_field
from gateway import tenants
from stack.local import REPO, LocalStack, Process, collector_binary, http_get

RESULTS = REPO / "bench" / "results" / "soak.json"
RUN_DIR = REPO / ".run" / "bench-soak"
GATEWAY_ENV = {
    # Every limit stays on except the per-tenant request rate, raised above the load.
    "GATEWAY_RATE_LIMIT_REQUESTS_PER_SECOND": "1000000",
    "GATEWAY_RATE_LIMIT_BURST": "1000000",
    # All the load comes from one address (loopback): no cap per address.
    "GATEWAY_MAX_GRPC_CALLS_PER_PEER": "0",
    "GATEWAY_MAX_HTTP_CONNECTIONS_PER_PEER": "0",
}
MiB = 1024 * 1024

# What counts as a problem in each log: the gateway logs with Python's logging
# (`... ERROR name: ...`, tracebacks), the Collector with zap (`\terror\t`, panics).
PROBLEMS = {
    "gateway": {
        "error": re.compile(r"\b(ERROR|CRITICAL)\b"),
        "traceback": re.compile(r"^Traceback "),
        "warning": re.compile(r"\bWARNING\b"),
    },
    "collector": {
        "error": re.compile(r"\terror\t|\"level\":\"error\"|\bERROR\b"),
        "traceback": re.compile(r"^(panic:|goroutine \d+ \[)"),
        "warning": re.compile(r"\twarn\t|\"level\":\"warn\""),
    },
}


# -- reading a process from /proc ------------------------------------------------------


def gateway_outcomes(metrics_url: str) -> dict[str, float]:
    """gateway_requests_total summed by outcome."""
    status, body = http_get(f"{metrics_url}/metrics", timeout=5.0)
    outcomes: dict[str, float] = {}
    if status != 200:
        return outcomes
    for line in body.decode().splitlines():
        if line.startswith("gateway_requests_total{"):
            match = re.search(r'outcome="([^"]*)"', line)
            if match:
                value = float(line.rsplit(" ", 1)[1])
                outcomes[match.group(1)] = outcomes.get(match.group(1), 0.0) + value
    return outcomes


# -- sampling ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """The figures at one moment; CPU and request rates are over the interval before it."""

    t: float
    phase: str  # idle-before, load, load-end, idle-after
    gateway_rss_mib: float
    gateway_fds: int
    gateway_threads: int
    gateway_cpu_percent: float
    collector_rss_mib: float
    collector_cpu_percent: float
    accepted_per_s: float
    refused_per_s: float
    gateway_alive: bool
    collector_alive: bool


class Sampler:
    """Takes a Sample of the gateway and the Collector on demand."""

    def __init__(self, gateway: Process, collector: Process, gateway_metrics_url: str) -> None:
        self._gateway, self._collector, self._url = gateway, collector, gateway_metrics_url
        self._started = time.monotonic()
        self._last = self._started
        self._cpu = (cpu_seconds(gateway.popen.pid), cpu_seconds(collector.popen.pid))
        self._outcomes = gateway_outcomes(gateway_metrics_url)

    def take(self, phase: str) -> Sample:
        """One sample now."""
        now = time.monotonic()
        gw, col = self._gateway.popen.pid, self._collector.popen.pid
        cpu = (cpu_seconds(gw), cpu_seconds(col))
        outcomes = gateway_outcomes(self._url)
        elapsed = max(now - self._last, 1e-9)
        delta = {k: v - self._outcomes.get(k, 0.0) for k, v in outcomes.items()}
        sample = Sample(
            t=round(now - self._started, 1),
            phase=phase,
            gateway_rss_mib=round(status_field(gw, "VmRSS") / 1024, 1),
            gateway_fds=open_fds(gw),
            gateway_threads=status_field(gw, "Threads"),
            gateway_cpu_percent=round((cpu[0] - self._cpu[0]) / elapsed * 100, 1),
            collector_rss_mib=round(status_field(col, "VmRSS") / 1024, 1),
            collector_cpu_percent=round((cpu[1] - self._cpu[1]) / elapsed * 100, 1),
            accepted_per_s=round(delta.get("accepted", 0.0) / elapsed, 1),
            refused_per_s=round(sum(v for k, v in delta.items() if k != "accepted") / elapsed, 1),
            gateway_alive=self._gateway.popen.poll() is None,
            collector_alive=self._collector.popen.poll() is None,
        )
        self._last, self._cpu, self._outcomes = now, cpu, outcomes or self._outcomes
        return sample


def print_sample(sample: Sample) -> None:
    """One line of the running table."""
    print(
        f"{sample.t:8.0f} {sample.phase:<12}{sample.gateway_rss_mib:9.1f}{sample.gateway_fds:6d}"
        f"{sample.gateway_threads:5d}{sample.gateway_cpu_percent:8.1f}"
        f"{sample.collector_rss_mib:9.1f}{sample.collector_cpu_percent:8.1f}"
        f"{sample.accepted_per_s:9.1f}{sample.refused_per_s:8.1f}",
        flush=True,
    )


HEADER = (
    f"{'t (s)':>8} {'phase':<12}{'gw MiB':>9}{'fds':>6}{'thr':>5}{'gw CPU%':>8}"
    f"{'col MiB':>9}{'col CPU%':>8}{'ok/s':>9}{'other/s':>8}"
)


# -- summary -------------------------------------------------------------------------------


def trend_mib_per_hour(samples: list[Sample], field_name: str) -> float | None:
    """Least-squares slope of a memory figure over the second half of the load (MiB/h):
    the first half holds the warm-up growth of caches and allocator arenas."""
    load = [s for s in samples if s.phase == "load"]
    half = load[len(load) // 2 :]
    if len(half) < 3:
        return None
    xs = [s.t for s in half]
    ys = [float(getattr(s, field_name)) for s in half]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    if var == 0:
        return None
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var
    return round(slope * 3600, 2)


def summarize(samples: list[Sample]) -> dict[str, Any]:
    """Start, end, peak (and mean for CPU and rates) of each figure under load."""
    load = [s for s in samples if s.phase == "load"]
    summary: dict[str, Any] = {}
    if not load:
        return summary
    for name in (
        "gateway_rss_mib",
        "gateway_fds",
        "gateway_threads",
        "gateway_cpu_percent",
        "collector_rss_mib",
        "collector_cpu_percent",
        "accepted_per_s",
        "refused_per_s",
    ):
        values = [float(getattr(s, name)) for s in load]
        summary[name] = {
            "start": values[0],
            "end": values[-1],
            "peak": max(values),
            "mean": round(statistics.fmean(values), 1),
        }
    idle = {s.phase: s for s in samples if s.phase.startswith("idle")}
    summary["idle"] = {phase: asdict(s) for phase, s in idle.items()}
    summary["gateway_rss_trend_mib_per_hour"] = trend_mib_per_hour(samples, "gateway_rss_mib")
    summary["collector_rss_trend_mib_per_hour"] = trend_mib_per_hour(samples, "collector_rss_mib")
    summary["gateway_restarts_or_deaths"] = sum(not s.gateway_alive for s in samples)
    summary["collector_restarts_or_deaths"] = sum(not s.collector_alive for s in samples)
    return summary


def scan_log(path: Path, component: str, since_byte: int = 0) -> dict[str, Any]:
    """Counts and first examples of error, traceback and warning lines in a log."""
    found: dict[str, Any] = {"log": str(path)}
    try:
        with path.open("rb") as log:
            log.seek(since_byte)
            lines = log.read().decode(errors="replace").splitlines()
    except OSError:
        return {**found, "unreadable": True}
    for kind, pattern in PROBLEMS[component].items():
        hits = [line for line in lines if pattern.search(line)]
        found[kind] = {"count": len(hits), "first": [h[:300] for h in hits[:5]]}
    return found


# -- the run -------------------------------------------------------------------------------


def start_stack(tenant_count: int) -> tuple[LocalStack, Process, Process, Path]:
    """Collector and gateway on free ports; a keys file for the load generator."""
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    RUN_DIR.mkdir(parents=True)
    stack = LocalStack(RUN_DIR, tenants_file=RUN_DIR / "tenants.json")
    table, lines = tenants.TenantTable(), []
    for number in range(tenant_count):
        table, key = tenants.add_key(table, f"soak{number}")
        lines.append(f"soak{number} {key}\n")
    tenants.save(stack.tenants_file, table)
    keys_file = RUN_DIR / "keys.txt"
    keys_file.write_text("".join(lines))
    collector = stack.start_collector(collector_binary())
    stack.wait_ready(collector)
    gateway = stack.start_gateway(extra_env=GATEWAY_ENV)
    stack.wait_ready(gateway)
    return stack, gateway, collector, keys_file


def git_describe() -> str:
    """The commit being measured (with -dirty)."""
    result = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or "unknown"


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the stack, load it for `args.minutes`, sample, scan logs; the results."""
    seconds = args.minutes * 60
    binary = loadgen_binary()
    stack, gateway, collector, keys_file = start_stack(args.tenants)
    samples: list[Sample] = []
    outcome: dict[str, Any] = {}
    try:
        sampler = Sampler(gateway, collector, stack.gateway_metrics_url)
        print(HEADER)
        time.sleep(min(args.interval, 5.0))
        samples.append(sampler.take("idle-before"))
        print_sample(samples[-1])
        options = LoadOptions(
            target="grpc",
            addr=f"127.0.0.1:{stack.ports.gateway_grpc}",
            keys_file=keys_file,
            points=args.points,
            concurrency=args.concurrency,
            conns=args.conns,
            rate=args.rate,
            duration_s=seconds,
            warmup_s=0.0,
            timeout_s=10.0,
        )

        def load() -> None:
            try:
                outcome["result"] = run_loadgen(options, binary=binary)
            except Exception as exc:  # reported in the results, not raised from a thread
                outcome["error"] = repr(exc)

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        while loader.is_alive():
            loader.join(args.interval)
            # The load's last moments, up to when it stopped, are kept out of the
            # summary (connections closing) and out of the idle sample after it.
            samples.append(sampler.take("load" if loader.is_alive() else "load-end"))
            print_sample(samples[-1])
        time.sleep(min(args.interval, 5.0))
        samples.append(sampler.take("idle-after"))
        print_sample(samples[-1])
    finally:
        logs = {
            "gateway": scan_log(gateway.log, "gateway"),
            "collector": scan_log(collector.log, "collector"),
        }
        stack.stop_all()
    result: LoadResult | None = outcome.get("result")
    return {
        "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": git_describe(),
        "machine": {"cpus": os.cpu_count(), "load_at_end": list(os.getloadavg())},
        "settings": {
            "minutes": args.minutes,
            "rate": args.rate,
            "points": args.points,
            "tenants": args.tenants,
            "concurrency": args.concurrency,
            "conns": args.conns,
            "interval": args.interval,
            "gateway_env": GATEWAY_ENV,
            "load_generator": "bench/loadgen (Go), open loop, poisson arrivals",
        },
        "summary": summarize(samples),
        "load": None if result is None else result.raw,
        "load_error": outcome.get("error"),
        "logs": logs,
        "samples": [asdict(s) for s in samples],
    }


def print_summary(results: dict[str, Any]) -> None:
    """The figures worth quoting."""
    summary = results["summary"]
    print("\nunder load           start      end     peak     mean")
    for name, figures in summary.items():
        if isinstance(figures, dict) and "peak" in figures:
            print(
                f"{name:<21}{figures['start']:>8}{figures['end']:>9}"
                f"{figures['peak']:>9}{figures['mean']:>9}"
            )
    print(f"gateway RSS trend (2nd half): {summary.get('gateway_rss_trend_mib_per_hour')} MiB/h")
    print(
        f"Collector RSS trend (2nd half): {summary.get('collector_rss_trend_mib_per_hour')} MiB/h"
    )
    load = results["load"]
    if load is not None:
        print(
            f"load: {load['requests']} requests, {load['ok']} OK, statuses {load['statuses']}, "
            f"{load['ok_per_s']:.0f} OK/s, latency ms {load['latency_ms']}"
        )
    else:
        print(f"load generator failed: {results['load_error']}")
    for component, found in results["logs"].items():
        counts = {k: v["count"] for k, v in found.items() if isinstance(v, dict)}
        print(f"{component} log: {counts} ({found['log']})")
        for kind in ("error", "traceback"):
            for line in found.get(kind, {}).get("first", []):
                print(f"  {kind}: {line}")


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run, print, write bench/results/soak.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the load")
    parser.add_argument("--quick", action="store_true", help="2 minutes")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s in total")
    parser.add_argument("--points", type=int, default=20, help="data points per request")
    parser.add_argument("--tenants", type=int, default=4, help="keys the load rotates over")
    parser.add_argument("--concurrency", type=int, default=256, help="most requests in flight")
    parser.add_argument("--conns", type=int, default=8, help="gRPC connections of the generator")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes = 2.0
    results = run(args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print_summary(results)
    print(f"\nwritten to {RESULTS}")
    return 0 if results["load"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
