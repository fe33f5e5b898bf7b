"""Scale: up to 10,000 simulated agents over 1,000 tenants, three topologies side by side.

Run: `.venv/bin/python -m bench.scale` (2,500 → 5,000 → 10,000 agents on each
topology, about 20 minutes a round) or `--quick` (1,000 agents on each, about 5
minutes). `bench/simagents.py`, in a process of its own, plays the agents: 10 per
tenant (5 connectors, 5 data agents of 20 flows of 5 tasks) exporting over OTLP/gRPC
every 30 s, spread evenly over the interval. The same agents (same identities, same
load) go through each topology of `bench/scale/topologies.py` in turn: single (1
Collector, 1 Prometheus), sharded (N Collectors, 1 Prometheus), thanos (N Collectors,
2 Prometheus shards, Thanos Receive, Query and Ruler). `--rounds R` repeats the whole
sequence, topologies interleaved, and the summary quotes medians.

Each step raises the number of agents, waits one export interval (plus a margin) for
the new agents' first exports, then measures over a steady window:
- CPU of each process (cores: utime + stime from /proc/<pid>/stat over the window),
  and the busiest other processes on the machine (what ran beside);
- memory (VmRSS from /proc/<pid>/status, sampled every 0.5 s: peak over the step, end);
- requests and data points sent, errors, late sends and latency as the agents saw them;
- each TSDB's head series and samples appended (its own /metrics), remote-write lag;
- after the window, each target's scrape duration (mean and longest over the window),
  and through the query endpoint (Prometheus or Thanos Query): each agent's own
  series, target_info and the last-seen series against what the agents send, the
  gateway's refusals and the Collectors' refused points;
- export latency during the Collectors' and the gateway's scrapes and the gateway's
  fleet-series publishing, and the CPU of those moments (bench/scale/moments.py).
From these, per-series and per-request costs. A topology stops at its first step
with problems (`--keep-going` runs the rest). Prints a table per step and the
topologies side by side; writes bench/results/scale.json (`--output`). Asserts
nothing. `--merge A.json B.json ...` puts separate runs together as rounds of one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from bench.procstat import all_cpu_seconds, cpu_seconds, machine_seconds
from bench.scale import moments, probe
from bench.scale.report import print_side_by_side, print_step
from bench.scale.resize import run_resize
from bench.scale.run import (
    MemorySampler,
    SimAgents,
    expected_figures,
    write_tenants,
)
from bench.scale.topologies import TOPOLOGIES, Topology, running
from bench.simagents import AGENT_TYPES, AGENTS_PER_TENANT, LATE_AFTER_S

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results" / "scale.json"
RUN_DIR = REPO / ".run" / "bench-scale"
INTERVAL_S = 30.0
RAMP_MARGIN_S = 8.0
MOMENTS_AFTER_S = 15.0
"""Scrapes and publishing cycles are read as of this long after a window (a scrape's
sample appears when it ends: up to the 10 s timeout)."""
FULL_STEPS = (2_500, 5_000, 10_000)
QUICK_STEPS = (1_000,)
DEFAULT_COLLECTORS = 4
SERVICES = {service: kind for kind, (service, _) in AGENT_TYPES.items()}
"""job (service.name) → agent type."""


# -- one step -------------------------------------------------------------------------------


def run_step(
    topology: Topology,
    sim: SimAgents,
    sampler: MemorySampler,
    agents: int,
    hold_s: float,
) -> dict[str, Any]:
    """Ramp to `agents`, measure a steady window of `hold_s`, then read the figures."""
    pids = {**topology.pids, "simagents": sim.popen.pid}
    step_started = time.monotonic()
    sampler.take_peaks()
    sim.command(f"agents {agents}")
    time.sleep(INTERVAL_S + RAMP_MARGIN_S)
    identities = sim.identities()
    trace = moments.CpuTrace(dict(topology.pids))
    ramp = sim.stats()  # also starts the steady window
    ramp["window"].pop("exports")
    trace.start()
    stores_before = {name: probe.exposition(url) for name, url in topology.stores.items()}
    everyone_before = all_cpu_seconds()
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    machine_before = machine_seconds()
    window_started = time.monotonic()
    time.sleep(hold_s)
    seconds = time.monotonic() - window_started
    window_ended = time.time()
    trace.stop()
    cpu_after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    machine_after = machine_seconds()
    everyone_after = all_cpu_seconds()
    stores_after = {name: probe.exposition(url) for name, url in topology.stores.items()}
    steady = sim.stats()
    rss_end = sampler.sample()
    rss_peak = sampler.take_peaks()
    window = steady["window"]
    exports = window.pop("exports")
    requests_per_s = window["sent"] / window["seconds"]
    components = {}
    for name in pids:
        cores = (cpu_after[name] - cpu_before[name]) / seconds
        components[name] = {
            "cores": cores,
            "cpu_us_per_request": cores / requests_per_s * 1e6 if requests_per_s else None,
            "rss_mb_end": rss_end.get(name),
            "rss_mb_peak": max(rss_peak.get(name, 0.0), rss_end.get(name, 0.0)),
        }
    busy = (machine_after[0] - machine_before[0]) / seconds
    step: dict[str, Any] = {
        "topology": topology.name,
        "collector_count": topology.collectors,
        "agents": agents,
        "tenants": -(-agents // AGENTS_PER_TENANT),
        "window_s": seconds,
        "requests_per_s": requests_per_s,
        "data_points_per_s": window["points_sent"] / window["seconds"],
        "data_points_ok_per_s": window["points"] / window["seconds"],
        "machine_cores": (machine_after[2] - machine_before[2]) / seconds,
        "machine_cores_busy": busy,
        "machine_cores_iowait": (machine_after[1] - machine_before[1]) / seconds,
        "other_cores_busy": busy - sum(c["cores"] or 0.0 for c in components.values()),
        "beside": probe.beside(everyone_before, everyone_after, pids.values(), seconds),
        "components": components,
        "stores": _stores(stores_before, stores_after, seconds),
        "simagents_ramp": ramp["window"],
        "simagents_window": window,
        "simagents_totals": steady["totals"],
        "expected": expected_figures(agents, sim.ready["templates"]),
    }
    step.update(_pipeline_figures(topology, seconds))
    step["moments"] = _moments(topology, step, identities, exports, trace, window_ended)
    step["step_s"] = time.monotonic() - step_started
    step["problems"] = problems(step)
    return step


def _stores(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], seconds: float
) -> dict[str, dict[str, float | None]]:
    stores: dict[str, dict[str, float | None]] = {}
    for name, now in after.items():
        then = before.get(name, {})
        appended = "prometheus_tsdb_head_samples_appended_total"
        highest = now.get("prometheus_remote_storage_highest_timestamp_in_seconds")
        sent = now.get("prometheus_remote_storage_queue_highest_sent_timestamp_seconds")
        stores[name] = {
            "head_series": now.get("prometheus_tsdb_head_series"),
            "samples_per_s": (now[appended] - then.get(appended, 0.0)) / seconds
            if appended in now
            else None,
            "remote_write_lag_s": highest - sent if highest and sent else None,
            "remote_write_pending": now.get("prometheus_remote_storage_samples_pending"),
            "remote_write_failed": now.get("prometheus_remote_storage_samples_failed_total"),
            "remote_write_dropped": now.get("prometheus_remote_storage_samples_dropped_total"),
        }
    return stores


def _pipeline_figures(topology: Topology, window_s: float) -> dict[str, Any]:
    """What the topology's Prometheus servers (or Thanos Query) say after the window."""
    url = topology.query_url
    # One scrape interval more, so that a short window still holds two scrapes.
    span = window_s + 10.0
    scrapes = {
        scraper: probe.scrape_figures(api, span, topology.target_names)
        for scraper, api in topology.scrapers.items()
    }
    counted = time.monotonic()
    by_series = probe.agents_by_series(url, SERVICES)
    count_query_s = time.monotonic() - counted
    refused_by_outcome = {
        row["metric"].get("outcome", "?"): float(row["value"][1])
        for row in probe.instant(url, "sum by (outcome) (gateway_requests_total)")
    }
    return {
        "scrapes": scrapes,
        "found": {
            "agents_by_series": {
                k: {str(n): a for n, a in v.items()} for k, v in by_series.items()
            },
            "own_series": sum(n * a for v in by_series.values() for n, a in v.items()),
            "target_info": probe.scalar(url, 'count(target_info{component="collector"})') or 0,
            "last_seen": probe.scalar(url, f"count({probe.LAST_SEEN})") or 0,
            "count_query_s": count_query_s,
        },
        "gateway": {
            "requests_by_outcome": refused_by_outcome,
            "refused": sum(v for k, v in refused_by_outcome.items() if k != "accepted"),
            "overflow_series": probe.scalar(url, 'count({otel_metric_overflow="true"})') or 0,
            "forward_p99_s": probe.scalar(
                url,
                "histogram_quantile(0.99, sum by (le) "
                f"(increase(gateway_forward_duration_seconds_bucket[{span:.0f}s])))",
            ),
        },
        "collectors": {
            "refused_points": probe.scalar(
                url, 'sum({__name__=~"otelcol_receiver_refused_metric_points(_total)?"})'
            )
            or 0,
            "export_failed_points": probe.scalar(
                url, 'sum({__name__=~"otelcol_exporter_send_failed_metric_points(_total)?"})'
            )
            or 0,
        },
    }


def _moments(
    topology: Topology,
    step: dict[str, Any],
    identities: list[tuple[str, str]],
    exports: list[list[float]],
    trace: moments.CpuTrace,
    window_ended: float,
) -> dict[str, Any]:
    """Export latency during Collector scrapes and fleet-series publishing, and their CPU."""
    # Read as of just after the window (the counting queries before may take minutes),
    # late enough for the samples of scrapes still running when it ended.
    at = window_ended + MOMENTS_AFTER_S
    time.sleep(max(0.0, at - time.time()))
    found = moments.read_moments(
        topology.scrapers.values(),
        step["window_s"] + 2 * MOMENTS_AFTER_S,
        identities[0][1] if identities else None,
        at,
    )
    series = {
        row["address"]: row.get("samples", 0.0) for rows in step["scrapes"].values() for row in rows
    }
    return moments.analyse(
        found, exports, identities, topology.routed, trace, topology.target_names, series
    )


def problems(step: dict[str, Any]) -> list[str]:
    """What went wrong in a step (empty when every export was accepted and stored)."""
    window, found, expected = step["simagents_window"], step["found"], step["expected"]
    issues = []
    if window["errors"] or window["rejected_points"]:
        issues.append(
            f"exports failed {window['errors']}, points dropped {window['rejected_points']}"
        )
    if window["late"]:
        issues.append(f"{window['late']} sends over {LATE_AFTER_S:g} s late")
    if step["gateway"]["refused"]:
        issues.append(f"the gateway refused {step['gateway']['requests_by_outcome']}")
    if step["collectors"]["refused_points"]:
        issues.append(f"the Collectors refused {step['collectors']['refused_points']:.0f} points")
    for kind, series in expected["series_per_type"].items():
        complete = found["agents_by_series"].get(kind, {}).get(str(series), 0)
        if complete != expected["agents_per_type"][kind]:
            issues.append(
                f"{kind}: {complete} of {expected['agents_per_type'][kind]} agents have "
                f"their {series} series ({found['agents_by_series'].get(kind)})"
            )
    if found["target_info"] != step["agents"]:
        issues.append(f"target_info {found['target_info']:.0f} of {step['agents']}")
    if found["last_seen"] != expected["last_seen"]:
        issues.append(f"last-seen series {found['last_seen']:.0f} of {expected['last_seen']}")
    if step["gateway"]["overflow_series"]:
        issues.append("the gateway's own metrics overflowed (OpenTelemetry cardinality limit)")
    for scraper, rows in step["scrapes"].items():
        for row in rows:
            if row.get("up_min") != 1.0:
                issues.append(f"{scraper}: scrape of {row['target']} failed in the window")
    return issues


# -- the run --------------------------------------------------------------------------------


def run_topology(
    name: str,
    round_number: int,
    args: argparse.Namespace,
    keys_file: Path,
    steps_agents: list[int],
    resizes: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Every step of one topology, in a run directory of its own; then, with `--resize`
    and the sharded topology, a resize (appended to `resizes`)."""
    run_dir = RUN_DIR / f"{round_number}-{name}"
    run_dir.mkdir(parents=True)
    # Its own tenants file: the gateway keeps its fleet table beside it.
    tenants_file = run_dir / "tenants.json"
    shutil.copy(RUN_DIR / "tenants.json", tenants_file)
    steps: list[dict[str, Any]] = []
    print(f"\n##### round {round_number}, topology {name}", flush=True)
    with running(name, run_dir, tenants_file, args.collectors, spare=args.resize) as topology:
        sim = SimAgents(topology.gateway_endpoint, keys_file, run_dir / "simagents.log", INTERVAL_S)
        sampler = MemorySampler({**topology.pids, "simagents": sim.popen.pid})
        sampler.start()
        try:
            for agents in steps_agents:
                step = run_step(topology, sim, sampler, agents, args.hold)
                step["round"] = round_number
                steps.append(step)
                print_step(step)
                if step["problems"] and not args.keep_going:
                    print(f"  {name}: stopping at its first step with problems")
                    break
            if topology.resize is not None and steps:
                resize = run_resize(topology, sim)
                resize.update(round=round_number, agents=steps[-1]["agents"])
                resizes.append(resize)
        finally:
            sampler.stop()
            sim.stop()
    return steps


def main() -> None:
    """Run every round and topology, and write bench/results/scale.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 agents each, short hold")
    parser.add_argument("--steps", type=int, nargs="+", help="agent counts (2,500 5,000 10,000)")
    parser.add_argument("--hold", type=float, help="steady window per step, s (60; quick 15)")
    parser.add_argument(
        "--topologies",
        default=",".join(TOPOLOGIES),
        help=f"comma-separated, run in this order (default {','.join(TOPOLOGIES)})",
    )
    parser.add_argument(
        "--collectors",
        type=int,
        default=DEFAULT_COLLECTORS,
        help=f"Collectors of the sharded and thanos topologies ({DEFAULT_COLLECTORS})",
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat every topology (1)")
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help=f"results file ({RESULTS.relative_to(REPO)})"
    )
    parser.add_argument("--keep-going", action="store_true", help="run steps after a failing one")
    parser.add_argument(
        "--resize",
        action="store_true",
        help="after the sharded topology's steps, route to one Collector more and watch the "
        "moved agents' series for 4 minutes",
    )
    parser.add_argument(
        "--collector-memory-mib",
        type=int,
        help="each Collector's memory_limiter limit (COLLECTOR_MEMORY_LIMIT_MIB, spike a "
        "quarter of it); default: otel-collector/config.yaml's (1024)",
    )
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="RESULTS",
        help="run nothing: put the steps of these results files together as rounds of one "
        "run (medians over all) and write --output",
    )
    args = parser.parse_args()
    if args.merge:
        merge(args.merge, args.output)
        return
    steps_agents = sorted(args.steps or (QUICK_STEPS if args.quick else FULL_STEPS))
    args.hold = args.hold or (15.0 if args.quick else 60.0)
    topologies = [t.strip() for t in args.topologies.split(",") if t.strip()]
    unknown = set(topologies) - set(TOPOLOGIES)
    if unknown:
        parser.error(f"unknown topologies {sorted(unknown)}; known: {TOPOLOGIES}")
    if args.collector_memory_mib:
        # config.yaml reads these; the stacks pass this process's environment on.
        os.environ["COLLECTOR_MEMORY_LIMIT_MIB"] = str(args.collector_memory_mib)
        os.environ["COLLECTOR_MEMORY_SPIKE_MIB"] = str(args.collector_memory_mib // 4)

    shutil.rmtree(RUN_DIR, ignore_errors=True)
    RUN_DIR.mkdir(parents=True)
    keys_file = write_tenants(RUN_DIR, -(-max(steps_agents) // AGENTS_PER_TENANT))
    started = time.monotonic()
    steps: list[dict[str, Any]] = []
    resizes: list[dict[str, Any]] = []
    per_agent = None
    for round_number in range(1, args.rounds + 1):
        for name in topologies:
            ran = run_topology(name, round_number, args, keys_file, steps_agents, resizes)
            steps.extend(ran)
            per_agent = per_agent or (ran[0]["expected"]["per_type"] if ran else None)
    summary = summarize(steps)
    print_side_by_side(summary)
    document = {
        "benchmark": "scale",
        "quick": args.quick,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "interval_s": INTERVAL_S,
        "collectors": args.collectors,
        "collector_memory_limit_mib": args.collector_memory_mib or 1024,
        "hold_s": args.hold,
        "rounds": args.rounds,
        "topologies": topologies,
        "agents_per_tenant": AGENTS_PER_TENANT,
        "per_agent": per_agent,
        "minutes": (time.monotonic() - started) / 60,
        "runs": steps,
        "summary": summary,
        # bench/plot.py's scale figures: the sharded topology's components by step.
        "steps": plot_steps(summary),
        "resizes": resizes,
        "logs": str(RUN_DIR),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2), encoding="utf-8")
    print(f"\nwrote {args.output}; logs in {RUN_DIR.relative_to(REPO)}")


def merge(paths: list[Path], output: Path) -> None:
    """Several results files as one: each file's rounds renumbered after the previous
    file's, the summary recomputed over all of them."""
    documents = [json.loads(path.read_text(encoding="utf-8")) for path in paths]
    steps: list[dict[str, Any]] = []
    for document in documents:
        offset = max((step["round"] for step in steps), default=0)
        for step in document["runs"]:
            steps.append({**step, "round": step["round"] + offset})
    summary = summarize(steps)
    print_side_by_side(summary)
    merged = {
        **documents[0],
        "rounds": max((step["round"] for step in steps), default=0),
        "topologies": sorted({step["topology"] for step in steps}),
        "minutes": sum(document["minutes"] for document in documents),
        "merged_from": [
            {"file": path.name, "hold_s": d["hold_s"], "topologies": d["topologies"]}
            for path, d in zip(paths, documents, strict=True)
        ],
        "runs": steps,
        "summary": summary,
        "steps": plot_steps(summary),
        "resizes": [r for document in documents for r in document.get("resizes", [])],
    }
    output.write_text(json.dumps(merged, indent=2), encoding="utf-8")
    print(f"\nwrote {output}: {len(steps)} steps from {len(paths)} files")


# -- medians and costs ------------------------------------------------------------------------


def _group(name: str) -> str | None:
    if name.startswith("collector-"):
        return "collectors"
    if name.startswith("prometheus"):
        return "prometheus-all"
    return None


def flatten(step: dict[str, Any]) -> dict[str, float]:
    """A step's key figures, one number each, and its per-series and per-request costs."""
    flat: dict[str, float] = {
        "requests_per_s": step["requests_per_s"],
        "data_points_per_s": step["data_points_per_s"],
        "machine_cores_busy": step["machine_cores_busy"],
        "other_cores_busy": step["other_cores_busy"],
        "found_own_series": step["found"]["own_series"],
        "expected_own_series": step["expected"]["own_series"],
        "found_target_info": step["found"]["target_info"],
        "found_last_seen": step["found"]["last_seen"],
        "count_query_s": step["found"]["count_query_s"],
        "gateway_refused": step["gateway"]["refused"],
        "collector_refused_points": step["collectors"]["refused_points"],
        "export_errors": sum(step["simagents_window"]["errors"].values()),
        "late_sends": step["simagents_window"]["late"],
        "export_p50_ms": step["simagents_window"]["latency_s"].get("p50", 0.0) * 1e3,
        "export_p99_ms": step["simagents_window"]["latency_s"].get("p99", 0.0) * 1e3,
        "problems": len(step["problems"]),
    }
    complete = 0
    for kind, series in step["expected"]["series_per_type"].items():
        complete += step["found"]["agents_by_series"].get(kind, {}).get(str(series), 0)
    flat["agents_complete"] = complete
    found_moments = step.get("moments", {})
    for moment, figures in found_moments.get("latency", {}).items():
        for key in ("p50_ms", "p99_ms"):
            if key in figures:
                flat[f"export_{key}/{moment}"] = figures[key]
    publish = found_moments.get("phase_profile", {}).get("gateway_publish_cpu_s_per_cycle")
    if publish is not None:
        flat["cost/gateway_publish_ms_per_cycle"] = publish * 1e3
    scrape_cpu = found_moments.get("scrape_cpu", {})
    per_series = [
        figures["us_per_series_per_scrape"]
        for name, figures in scrape_cpu.items()
        if name.startswith("collector-") and figures["us_per_series_per_scrape"]
    ]
    if per_series:
        flat["cost/collectors_us_per_series_per_scrape"] = statistics.median(per_series)
    if "gateway" in scrape_cpu:
        flat["cost/gateway_ms_per_scrape"] = scrape_cpu["gateway"]["cpu_s_per_scrape"] * 1e3
    for name, figures in step["components"].items():
        group = _group(name)
        for key in ("cores", "rss_mb_end", "rss_mb_peak"):
            value = figures[key] or 0.0
            flat[f"{key}/{name}"] = value
            if group:
                flat[f"{key}/{group}"] = flat.get(f"{key}/{group}", 0.0) + value
    collector_rows = [
        row
        for rows in step["scrapes"].values()
        for row in rows
        if str(row["target"]).startswith("collector-") and "telemetry" not in str(row["target"])
    ]
    gateway_rows = [
        row for rows in step["scrapes"].values() for row in rows if row["target"] == "gateway"
    ]
    if gateway_rows:
        flat["scrape_max_s/gateway"] = max(r.get("duration_max_s", 0.0) for r in gateway_rows)
        flat["scrape_avg_s/gateway"] = statistics.fmean(
            r.get("duration_avg_s", 0.0) for r in gateway_rows
        )
    if collector_rows:
        flat["scrape_max_s/collectors"] = max(r.get("duration_max_s", 0.0) for r in collector_rows)
        flat["scrape_avg_s/collectors"] = statistics.fmean(
            r.get("duration_avg_s", 0.0) for r in collector_rows
        )
        # Series the Collectors expose (and Prometheus scrapes): the agents' and target_info.
        flat["series/collectors"] = sum(r.get("samples", 0.0) for r in collector_rows)
    for name, store in step["stores"].items():
        group = "receive" if name == "thanos-receive" else "prometheus"
        for key in ("head_series", "samples_per_s"):
            flat[f"{key}/{group}"] = flat.get(f"{key}/{group}", 0.0) + (store[key] or 0.0)
        if store["remote_write_lag_s"] is not None:
            lag = flat.get("remote_write_lag_s", 0.0)
            flat["remote_write_lag_s"] = max(lag, store["remote_write_lag_s"])
    flat.update(costs(flat))
    return flat


MIB = 1024 * 1024


def costs(flat: dict[str, float]) -> dict[str, float]:
    """Per-request and per-series costs from a step's flat figures (whole process, so
    fixed costs included: see `marginal` for the slope between steps)."""
    result = {}

    def ratio(key: str, numerator: float | None, denominator: float | None) -> None:
        if numerator is not None and denominator:
            result[key] = numerator / denominator

    requests, points = flat["requests_per_s"], flat["data_points_per_s"]
    ratio("cost/gateway_us_per_request", flat.get("cores/gateway", 0) * 1e6, requests)
    ratio("cost/collectors_us_per_point", flat.get("cores/collectors", 0) * 1e6, points)
    series = flat.get("series/collectors")
    ratio("cost/collectors_cores_per_100k_series", flat.get("cores/collectors", 0) * 1e5, series)
    ratio("cost/collectors_bytes_per_series", flat.get("rss_mb_end/collectors", 0) * MIB, series)
    for group, process in (("prometheus", "prometheus-all"), ("receive", "thanos-receive")):
        head = flat.get(f"head_series/{group}")
        cores_key, rss_key = f"cores/{process}", f"rss_mb_end/{process}"
        ratio(
            f"cost/{group}_us_per_sample",
            flat.get(cores_key, 0) * 1e6,
            flat.get(f"samples_per_s/{group}"),
        )
        ratio(f"cost/{group}_bytes_per_series", flat.get(rss_key, 0) * MIB, head)
        ratio(f"cost/{group}_cores_per_100k_series", flat.get(cores_key, 0) * 1e5, head)
    return result


def summarize(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Per topology and agent count: the median of each flat figure over the rounds,
    and the marginal costs between the smallest and largest step without problems."""
    grouped: dict[str, dict[int, list[dict[str, float]]]] = {}
    for step in steps:
        grouped.setdefault(step["topology"], {}).setdefault(step["agents"], []).append(
            flatten(step)
        )
    summary: dict[str, Any] = {}
    for topology, by_agents in grouped.items():
        medians = {}
        for agents, flats in sorted(by_agents.items()):
            keys = sorted({key for flat in flats for key in flat})
            medians[str(agents)] = {
                key: statistics.median(flat[key] for flat in flats if key in flat) for key in keys
            }
            medians[str(agents)]["rounds"] = len(flats)
        summary[topology] = {"by_agents": medians, "marginal": marginal(medians)}
    return summary


def marginal(medians: dict[str, dict[str, float]]) -> dict[str, float]:
    """Cost of one more series or request: the slope between the smallest and the largest
    agent count without problems (per-process fixed costs cancel out)."""
    clean = [agents for agents, flat in medians.items() if not flat.get("problems")]
    if len(clean) < 2:
        return {}
    low, high = medians[clean[0]], medians[clean[-1]]
    result = {"from_agents": float(clean[0]), "to_agents": float(clean[-1])}

    def slope(key: str, numerator: str, denominator: str, scale: float) -> None:
        d_den = high.get(denominator, 0.0) - low.get(denominator, 0.0)
        if d_den:
            result[key] = (high.get(numerator, 0.0) - low.get(numerator, 0.0)) / d_den * scale

    slope("gateway_us_per_request", "cores/gateway", "requests_per_s", 1e6)
    slope("gateway_bytes_per_agent", "rss_mb_end/gateway", "found_target_info", MIB)
    slope("collectors_us_per_point", "cores/collectors", "data_points_per_s", 1e6)
    slope("collectors_cores_per_100k_series", "cores/collectors", "series/collectors", 1e5)
    slope("collectors_bytes_per_series", "rss_mb_end/collectors", "series/collectors", MIB)
    slope("prometheus_us_per_sample", "cores/prometheus-all", "samples_per_s/prometheus", 1e6)
    slope("prometheus_bytes_per_series", "rss_mb_end/prometheus-all", "head_series/prometheus", MIB)
    slope("receive_us_per_sample", "cores/thanos-receive", "samples_per_s/receive", 1e6)
    slope("receive_bytes_per_series", "rss_mb_end/thanos-receive", "head_series/receive", MIB)
    return result


def plot_steps(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline topology's medians in the shape bench/plot.py reads."""
    chosen = summary.get("sharded") or next(iter(summary.values()), None)
    if chosen is None:
        return []
    rows = []
    for agents, flat in chosen["by_agents"].items():
        components = {
            name: {
                "cores": flat.get(f"cores/{key}", 0.0),
                "rss_mb_peak": flat.get(f"rss_mb_peak/{key}", 0.0),
            }
            for name, key in (
                ("gateway", "gateway"),
                ("collector", "collectors"),
                ("prometheus", "prometheus-all"),
            )
        }
        rows.append({"agents": int(agents), "components": components})
    return rows


if __name__ == "__main__":
    main()
