"""Scale on one machine: 1,000 → 10,000 simulated agents through one gateway.

Run: `.venv/bin/python -m bench.bench_scale` (about 8 minutes) or `--quick` (1,000 and
2,000 agents, about 1.5 minutes). Starts the real Collector, gateway and Prometheus
with the repository's configurations and default limits (scripts/localstack.py), a
tenants file with one API key per tenant, and `bench/simagents.py` in a process of
its own: 10 agents per tenant (5 connectors, 5 data agents) exporting over OTLP/gRPC
every 30 s, spread evenly over the interval.

Each step raises the number of agents, waits one export interval (plus a margin) for
the new agents' first exports, then measures over a steady window:
- CPU of each process (cores: utime + stime from /proc/<pid>/stat over the window);
- memory (VmRSS from /proc/<pid>/status, sampled every 0.5 s: peak over the step, end);
- requests and data points sent, errors, late sends and the gateway's latency as the
  simulated agents saw it;
- after the window, from Prometheus: head series, the agents' series (expected vs
  found), the gateway's refusals, the Collector's refused points and failed exports,
  and each target's scrape duration and size.
Prints a table per step and writes bench/results/scale.json. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

if not __package__:  # run as a file: the repository root holds `scripts` and `bench`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procstat import CLOCK_TICKS, cpu_seconds, status_field
from bench.simagents import AGENTS_PER_TENANT, CONNECTORS_PER_TENANT, LATE_AFTER_S
from gateway import tenants
from scripts.localstack import (
    LocalStack,
    StackError,
    collector_binary,
    http_get,
    prometheus_binary,
)

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "scale.json"
RUN_DIR = REPO / ".run" / "bench-scale"
INTERVAL_S = 30.0
SCRAPE_INTERVAL_S = 10.0
"""prometheus/prometheus.yml's scrape_interval."""
RAMP_MARGIN_S = 8.0
FULL_STEPS = (1_000, 2_500, 5_000, 10_000)
QUICK_STEPS = (1_000, 2_000)
COMPONENTS = ("gateway", "collector", "prometheus", "simagents")

# Instant queries after each step's window; None when the query returns nothing.
QUERIES = {
    "head_series": "prometheus_tsdb_head_series",
    "agent_series": 'count({__name__=~"connector_.*|agent_.*", component="collector"})',
    "target_info": 'count(target_info{component="collector"})',
    "connectors_in_prometheus": "count(connector_uptime_seconds)",
    "data_agents_in_prometheus": "count(agent_uptime_seconds)",
    "agents_seen_by_gateway": 'count({__name__=~"(connector|agent)_last_seen_seconds"})',
    "gateway_requests_accepted": 'sum(gateway_requests_total{outcome="accepted"})',
    "gateway_requests_refused": 'sum(gateway_requests_total{outcome!="accepted"}) or vector(0)',
    # Series the gateway's OpenTelemetry SDK folded into one for over 2,000 attribute
    # sets per instrument (its default cardinality limit).
    "gateway_overflow_series": 'count({otel_metric_overflow="true"}) or vector(0)',
    "gateway_points_forwarded": 'sum(gateway_data_points_total{outcome="forwarded"})',
    "gateway_points_rejected": 'sum(gateway_data_points_total{outcome="rejected"}) or vector(0)',
    "gateway_points_failed": 'sum(gateway_data_points_total{outcome="failed"}) or vector(0)',
    "collector_accepted_points": "sum({__name__=~"
    '"otelcol_receiver_accepted_metric_points(_total)?"})',
    "collector_refused_points": "sum({__name__=~"
    '"otelcol_receiver_refused_metric_points(_total)?"}) or vector(0)',
    "collector_failed_points": "sum({__name__=~"
    '"otelcol_receiver_failed_metric_points(_total)?"}) or vector(0)',
    "collector_export_failed_points": "sum({__name__=~"
    '"otelcol_exporter_send_failed_metric_points(_total)?"}) or vector(0)',
}
# Per scrape target (the `component` label of the target files).
TARGET_QUERIES = {
    "up": "up",
    "scrape_duration_s": "scrape_duration_seconds",
    "scrape_samples": "scrape_samples_scraped",
}


# -- processes: CPU and memory from /proc ------------------------------------------------


def machine_seconds() -> tuple[float, float, float]:
    """(busy, iowait, total) CPU seconds of the whole machine, all cores (/proc/stat)."""
    with open("/proc/stat", encoding="ascii") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle, iowait = values[3], values[4]
    total = sum(values)
    return (total - idle - iowait) / CLOCK_TICKS, iowait / CLOCK_TICKS, total / CLOCK_TICKS


@dataclass
class MemorySampler:
    """Samples each process's RSS every half second; peak since the last reset."""

    pids: dict[str, int]
    peak: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        """Sample in a daemon thread until `stop`."""
        threading.Thread(target=self._run, name="rss-sampler", daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.sample()

    def sample(self) -> dict[str, float]:
        """RSS now, MB; folded into the peaks."""
        now = {}
        for name, pid in self.pids.items():
            try:
                now[name] = status_field(pid, "VmRSS") / 1024
            except OSError:
                continue
        with self._lock:
            for name, value in now.items():
                self.peak[name] = max(self.peak.get(name, 0.0), value)
        return now

    def take_peaks(self) -> dict[str, float]:
        """The peaks since the previous call, which resets them."""
        with self._lock:
            peaks, self.peak = self.peak, {}
        return peaks

    def stop(self) -> None:
        """End the sampling thread."""
        self._stop.set()


# -- the simulated agents' process ------------------------------------------------------------


class SimAgents:
    """`bench/simagents.py` in a process of its own, driven through its stdin."""

    def __init__(self, endpoint: str, keys_file: Path, log: Path) -> None:
        self._log = log.open("ab")
        self.popen = subprocess.Popen(
            [
                *(sys.executable, "-m", "bench.simagents"),
                *("--endpoint", endpoint, "--keys", str(keys_file)),
                *("--interval", str(INTERVAL_S)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=REPO,
            text=True,
            start_new_session=True,
        )
        self.ready = self._read()

    def _stdin(self) -> IO[str]:
        assert self.popen.stdin is not None
        return self.popen.stdin

    def _read(self) -> dict[str, Any]:
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline()
        if not line:
            raise StackError(f"simagents exited ({self.popen.poll()}); see {self._log.name}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def command(self, text: str) -> None:
        """Send one command line."""
        self._stdin().write(text + "\n")
        self._stdin().flush()

    def stats(self) -> dict[str, Any]:
        """Totals and the window since the previous call."""
        self.command("stats")
        return self._read()

    def stop(self) -> None:
        """`quit`, then SIGTERM and SIGKILL if it lingers."""
        if self.popen.poll() is None:
            try:
                self.command("quit")
                self.popen.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.popen.terminate()
                try:
                    self.popen.wait(5)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait()
        self._log.close()


# -- Prometheus ---------------------------------------------------------------------------------


def query(stack: LocalStack, promql: str) -> list[dict[str, Any]]:
    """An instant query with a generous timeout (counting 10^6 series takes seconds)."""
    url = f"{stack.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    status, body = http_get(url, timeout=60.0)
    if status != 200:
        raise StackError(f"Prometheus answered {status} to {promql!r}: {body[:300]!r}")
    result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
    return result


def scalar(stack: LocalStack, promql: str) -> float | None:
    """The first value of an instant query, or None."""
    result = query(stack, promql)
    return float(result[0]["value"][1]) if result else None


def prometheus_figures(stack: LocalStack, window_s: float) -> dict[str, Any]:
    """Every query of QUERIES and TARGET_QUERIES (by component) now."""
    figures: dict[str, Any] = {name: scalar(stack, promql) for name, promql in QUERIES.items()}
    # The gateway's forward latency over the steady window just ended.
    # One scrape interval more, so that a short window still holds two scrapes.
    span = f"{window_s + SCRAPE_INTERVAL_S:.0f}s"
    figures["gateway_forward_p99_s"] = scalar(
        stack,
        "histogram_quantile(0.99, sum by (le) "
        f"(increase(gateway_forward_duration_seconds_bucket[{span}])))",
    )
    targets: dict[str, dict[str, float]] = {}
    for name, promql in TARGET_QUERIES.items():
        for row in query(stack, promql):
            component = row["metric"].get("component", row["metric"].get("job", "?"))
            targets.setdefault(component, {})[name] = float(row["value"][1])
    figures["targets"] = targets
    figures["gateway_refused_by_outcome"] = {
        row["metric"].get("outcome", "?"): float(row["value"][1])
        for row in query(stack, 'sum by (outcome) (gateway_requests_total{outcome!="accepted"})')
    }
    return figures


# -- the run ------------------------------------------------------------------------------------


def write_tenants(run_dir: Path, count: int) -> Path:
    """A tenants file of `count` tenants, one key each; the keys as a JSON list."""
    table = tenants.TenantTable()
    keys = []
    for number in range(count):
        table, key = tenants.add_key(table, f"org-{number:04d}")
        keys.append(key)
    tenants.save(run_dir / "tenants.json", table)
    keys_file = run_dir / "keys.json"
    keys_file.write_text(json.dumps(keys), encoding="utf-8")
    return keys_file


def expected_series(agents: int, per_type: dict[str, dict[str, int]]) -> int:
    """The agents' series Prometheus should hold (target_info excluded)."""
    tenants_full, rest = divmod(agents, AGENTS_PER_TENANT)
    connectors = tenants_full * CONNECTORS_PER_TENANT + min(rest, CONNECTORS_PER_TENANT)
    return (
        connectors * per_type["connector"]["series"]
        + (agents - connectors) * per_type["etl"]["series"]
    )


def run_step(
    stack: LocalStack,
    sim: SimAgents,
    pids: dict[str, int],
    sampler: MemorySampler,
    agents: int,
    hold_s: float,
) -> dict[str, Any]:
    """Ramp to `agents`, measure a steady window of `hold_s`, then query Prometheus."""
    step_started = time.monotonic()
    sampler.take_peaks()
    sim.command(f"agents {agents}")
    time.sleep(INTERVAL_S + RAMP_MARGIN_S)
    ramp = sim.stats()  # also starts the steady window
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    machine_before = machine_seconds()
    window_started = time.monotonic()
    time.sleep(hold_s)
    seconds = time.monotonic() - window_started
    cpu_after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    machine_after = machine_seconds()
    steady = sim.stats()
    rss_end = sampler.sample()
    rss_peak = sampler.take_peaks()
    window = steady["window"]
    requests_per_s = window["sent"] / window["seconds"]
    busy = (machine_after[0] - machine_before[0]) / seconds
    components: dict[str, dict[str, float | None]] = {}
    cores_total = 0.0
    for name in pids:
        cores = (cpu_after[name] - cpu_before[name]) / seconds
        cores_total += cores
        components[name] = {
            "cores": cores,
            "cpu_us_per_request": cores / requests_per_s * 1e6 if requests_per_s else None,
            "rss_mb_end": rss_end.get(name),
            "rss_mb_peak": max(rss_peak.get(name, 0.0), rss_end.get(name, 0.0)),
        }
    prometheus = prometheus_figures(stack, seconds)
    return {
        "agents": agents,
        "tenants": -(-agents // AGENTS_PER_TENANT),
        "window_s": seconds,
        "step_s": time.monotonic() - step_started,
        "requests_per_s": requests_per_s,
        "data_points_per_s": window["points_sent"] / window["seconds"],
        "data_points_ok_per_s": window["points"] / window["seconds"],
        # What Prometheus ingests: every target's samples once per scrape interval.
        "samples_per_s": sum(
            target.get("scrape_samples", 0.0) for target in prometheus["targets"].values()
        )
        / SCRAPE_INTERVAL_S,
        "machine_cores_busy": busy,
        "machine_cores_iowait": (machine_after[1] - machine_before[1]) / seconds,
        "machine_cores": (machine_after[2] - machine_before[2]) / seconds,
        # Everything else on the machine (other work, the kernel): noise to watch.
        "other_cores_busy": busy - cores_total,
        "components": components,
        "simagents_ramp": ramp["window"],
        "simagents_window": window,
        "simagents_totals": steady["totals"],
        "expected_agent_series": expected_series(agents, sim.ready["templates"]),
        "prometheus": prometheus,
    }


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_step(step: dict[str, Any]) -> None:
    """One step's table."""
    window, prom = step["simagents_window"], step["prometheus"]
    print(
        f"\n== {step['agents']:,} agents, {step['tenants']:,} tenants: "
        f"{step['requests_per_s']:.0f} requests/s, {step['data_points_per_s']:,.0f} points/s "
        f"sent ({step['data_points_ok_per_s']:,.0f} accepted), Prometheus ingesting "
        f"{step['samples_per_s']:,.0f} samples/s "
        f"(window {step['window_s']:.0f} s)\n  machine: {step['machine_cores_busy']:.2f} of "
        f"{step['machine_cores']:.1f} cores busy, {step['other_cores_busy']:.2f} of them outside "
        f"the four processes below; iowait {step['machine_cores_iowait']:.2f}"
    )
    print(f"  {'component':<12}{'cores':>8}{'µs/request':>12}{'RSS end MB':>12}{'peak MB':>10}")
    for name, figures in step["components"].items():
        print(
            f"  {name:<12}{figures['cores']:8.3f}{_fmt(figures['cpu_us_per_request'], '12.0f')}"
            f"{_fmt(figures['rss_mb_end'], '12.1f')}{_fmt(figures['rss_mb_peak'], '10.1f')}"
        )
    latency, lateness = window["latency_s"], window["lateness_s"]
    print(
        f"  sends: {window['sent']:,} ok {window['ok']:,} errors {window['errors'] or 0} "
        f"partial-rejected points {window['rejected_points']} late(>1 s) {window['late']} "
        f"max in flight {window['max_in_flight']}"
    )
    if latency:
        print(
            f"  export latency ms: p50 {latency['p50'] * 1e3:.1f} p99 {latency['p99'] * 1e3:.1f} "
            f"max {latency['max'] * 1e3:.1f}; send lateness ms: p99 "
            f"{lateness.get('p99', 0) * 1e3:.1f} max {lateness.get('max', 0) * 1e3:.1f}"
        )
    print(
        f"  series: head {_fmt(prom['head_series'], ',.0f')}, agents' "
        f"{_fmt(prom['agent_series'], ',.0f')} (expected {step['expected_agent_series']:,}), "
        f"target_info {_fmt(prom['target_info'], ',.0f')}; agents in Prometheus "
        f"{_fmt(prom['connectors_in_prometheus'], '.0f')} connectors + "
        f"{_fmt(prom['data_agents_in_prometheus'], '.0f')} data agents; seen by the gateway "
        f"{_fmt(prom['agents_seen_by_gateway'], '.0f')} (overflow series "
        f"{_fmt(prom['gateway_overflow_series'], '.0f')})"
    )
    print(
        f"  since start: gateway refused requests {_fmt(prom['gateway_requests_refused'], '.0f')} "
        f"{prom['gateway_refused_by_outcome'] or ''}, "
        f"rejected points {_fmt(prom['gateway_points_rejected'], '.0f')}, failed points "
        f"{_fmt(prom['gateway_points_failed'], '.0f')}, forward p99 "
        f"{_fmt(prom['gateway_forward_p99_s'], '.4f')} s; Collector refused points "
        f"{_fmt(prom['collector_refused_points'], '.0f')}, failed exports "
        f"{_fmt(prom['collector_export_failed_points'], '.0f')}"
    )
    print(f"  problems: {'; '.join(step['problems']) or 'none'}")
    for component, target in sorted(prom["targets"].items()):
        print(
            f"  scrape {component:<20} up {_fmt(target.get('up'), '.0f')} "
            f"duration {_fmt(target.get('scrape_duration_s'), '.3f')} s "
            f"samples {_fmt(target.get('scrape_samples'), ',.0f')}"
        )


def problems(step: dict[str, Any]) -> list[str]:
    """What went wrong in a step (empty when every export was accepted and stored)."""
    window, prom = step["simagents_window"], step["prometheus"]
    found = []
    if window["errors"] or window["rejected_points"]:
        errors, dropped = window["errors"], window["rejected_points"]
        found.append(f"exports failed {errors}, points dropped {dropped}")
    if window["late"]:
        found.append(f"{window['late']} sends over {LATE_AFTER_S:g} s late")
    if prom["agent_series"] != step["expected_agent_series"]:
        found.append(
            f"agents' series {prom['agent_series']} in Prometheus, "
            f"expected {step['expected_agent_series']}"
        )
    if prom["gateway_overflow_series"]:
        found.append("the gateway's own metrics overflowed (OpenTelemetry SDK cardinality limit)")
    for component, target in prom["targets"].items():
        if target.get("up") != 1.0:
            found.append(f"scrape of {component} failing")
    return found


def slopes(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-agent costs from the first and the last step without problems: memory
    growth per 1,000 agents and per 1,000 of the agents' series, CPU per request."""
    clean = [step for step in steps if not step["problems"]]
    if len(clean) < 2:
        return {"note": "fewer than two steps without problems"}
    first, last = clean[0], clean[-1]
    d_agents = last["agents"] - first["agents"]
    d_series = last["expected_agent_series"] - first["expected_agent_series"]
    result: dict[str, Any] = {"from_agents": first["agents"], "to_agents": last["agents"]}
    for name in last["components"]:
        d_rss = (last["components"][name]["rss_mb_end"] or 0) - (
            first["components"][name]["rss_mb_end"] or 0
        )
        result[name] = {
            "rss_mb_per_1000_agents": d_rss / d_agents * 1000,
            "rss_mb_per_1000_agent_series": d_rss / d_series * 1000,
            "cpu_us_per_request": last["components"][name]["cpu_us_per_request"],
            "cpu_us_per_data_point": last["components"][name]["cores"]
            / last["data_points_per_s"]
            * 1e6,
        }
    result["prometheus"]["cpu_us_per_sample_ingested"] = (
        last["components"]["prometheus"]["cores"] / last["samples_per_s"] * 1e6
    )
    return result


def main() -> None:
    """Run the steps and write bench/results/scale.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 and 2,000 agents, short hold")
    parser.add_argument("--steps", type=int, nargs="+", help="agent counts (default 1k-10k)")
    parser.add_argument("--hold", type=float, help="steady window per step, s (60; quick 12)")
    parser.add_argument(
        "--collector-memory-mib",
        type=int,
        help="the Collector's memory_limiter limit (COLLECTOR_MEMORY_LIMIT_MIB, spike a "
        "quarter of it); default: the repository's (512)",
    )
    args = parser.parse_args()
    steps_agents = args.steps or (QUICK_STEPS if args.quick else FULL_STEPS)
    hold_s = args.hold or (12.0 if args.quick else 60.0)

    shutil.rmtree(RUN_DIR, ignore_errors=True)
    RUN_DIR.mkdir(parents=True)
    keys_file = write_tenants(RUN_DIR, -(-max(steps_agents) // AGENTS_PER_TENANT))
    if args.collector_memory_mib:
        # config.yaml reads these; LocalStack passes this process's environment on.
        os.environ["COLLECTOR_MEMORY_LIMIT_MIB"] = str(args.collector_memory_mib)
        os.environ["COLLECTOR_MEMORY_SPIKE_MIB"] = str(args.collector_memory_mib // 4)
    stack = LocalStack(RUN_DIR, RUN_DIR / "tenants.json")
    sim: SimAgents | None = None
    sampler: MemorySampler | None = None
    steps: list[dict[str, Any]] = []
    try:
        collector = stack.start_collector(collector_binary())
        stack.wait_ready(collector)
        gateway = stack.start_gateway()
        stack.wait_ready(gateway)
        prometheus = stack.start_prometheus(prometheus_binary())
        stack.wait_ready(prometheus)
        sim = SimAgents(stack.gateway_grpc_endpoint, keys_file, RUN_DIR / "simagents.log")
        print(f"per agent: {sim.ready['templates']} (series: Prometheus series, target_info not)")
        pids = {
            "gateway": gateway.popen.pid,
            "collector": collector.popen.pid,
            "prometheus": prometheus.popen.pid,
            "simagents": sim.popen.pid,
        }
        sampler = MemorySampler(pids)
        sampler.start()
        for agents in steps_agents:
            step = run_step(stack, sim, pids, sampler, agents, hold_s)
            step["problems"] = problems(step)
            steps.append(step)
            print_step(step)
    finally:
        if sampler is not None:
            sampler.stop()
        if sim is not None:
            sim.stop()
        stack.stop_all()
    document = {
        "benchmark": "scale",
        "quick": args.quick,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "interval_s": INTERVAL_S,
        "collector_memory_limit_mib": args.collector_memory_mib or 512,
        "hold_s": hold_s,
        "agents_per_tenant": AGENTS_PER_TENANT,
        "connectors_per_tenant": CONNECTORS_PER_TENANT,
        "per_agent": sim.ready["templates"] if sim is not None else None,
        "steps": steps,
        "slopes": slopes(steps),
        "logs": str(RUN_DIR),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(document, indent=2), encoding="utf-8")
    print(f"\nwrote {RESULTS.relative_to(REPO)}; logs in {RUN_DIR.relative_to(REPO)}")


if __name__ == "__main__":
    main()
