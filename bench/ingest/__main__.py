"""`python -m bench.ingest`: both phases, the tables, bench/results/ingest.json."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from bench.ingest.cases import (
    ACHIEVED_MIN,
    BLOCKS,
    GATEWAY_ENV,
    LATENCY_PATHS,
    RESULTS,
    SCALE_MIX,
    SCALE_RATE,
    Case,
    Load,
)
from bench.ingest.measure import Measurement, medians
from bench.ingest.report import fmt, print_tables, refusals
from bench.ingest.systems import Bench, Sut
from bench.procstat import cpu_list, cpus_allowed
from stack.local import REPO

# -- phases ---------------------------------------------------------------------------


def run_blocks(
    bench: Bench, names: list[str], rounds: int, body: Callable[[Sut, int], None]
) -> dict[str, str]:
    """Start each SUT in turn (order rotated per round) and run `body` on it; a SUT
    that fails to start, dies or errs is not run again. Returns failures by SUT."""
    failures: dict[str, str] = {}
    for round_number in range(rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            if name in failures:
                continue
            try:
                sut = bench.start(name)
            except Exception as exc:
                failures[name] = f"did not start: {exc}"
                print(f"  {name}: {failures[name]}", file=sys.stderr)
                continue
            affinity = ",".join(cpus_allowed(pid) for pid in sut.pids)
            print(f"round {round_number + 1}/{rounds}: {name} (CPUs {affinity})", file=sys.stderr)
            try:
                body(sut, round_number)
                if dead := [p for p in sut.processes if p.popen.poll() is not None]:
                    raise RuntimeError(f"{dead[0].name} died: {dead[0].log_tail(10)}")
            except Exception as exc:
                failures[name] = f"{type(exc).__name__}: {exc}"
                print(f"  {name}: {failures[name]}", file=sys.stderr)
            finally:
                bench.stop(sut)
    return failures


def _progress(m: Measurement) -> None:
    f = m.figures()
    print(
        f"  {m.label:<32} {f['ok_per_s']:8.0f} req/s  {f['sut_cores']:4.2f} cores  "
        f"{fmt(f['cpu_us_per_req'], 0)} µs/req  p99 {fmt(f['p99_ms'], 2)} ms  "
        f"other: {f['other_sut_cores']:.2f} + {f['other_load_cores']:.2f} cores  "
        f"{refusals(m.result.refused)}",
        file=sys.stderr,
    )


def throughput_phase(
    bench: Bench, names: list[str], rounds: int
) -> tuple[list[Measurement], dict[str, str]]:
    """Closed-loop maximum of every case of every SUT in `names`."""
    results: list[Measurement] = []

    def body(sut: Sut, round_number: int) -> None:
        cases = [case for case in BLOCKS[sut.name] if matches(bench.args.match, case.name)]
        if not cases:
            return
        shift = round_number % len(cases)
        for case in cases[shift:] + cases[:shift]:
            rate = bench.args.scale_rate if case.paced else 0.0
            results.append(bench.measure(sut, case, round_number, rate))
            _progress(results[-1])

    return results, run_blocks(bench, names, rounds, body)


def latency_phase(
    bench: Bench, maxima: dict[str, dict[str, Any]], rounds: int
) -> tuple[list[Measurement], dict[str, str]]:
    """Open loop at a share of the gateway's maximum, through the gateway and straight
    to the Collector's gRPC receiver at the same rate, in alternating order."""
    results: list[Measurement] = []
    rates: dict[tuple[Load, int], float] = {}
    for target, points in LATENCY_PATHS:
        if not matches(bench.args.match, _path(target, points)):
            continue
        if target == SCALE_MIX:
            rates[(target, points)] = bench.args.scale_rate
            continue
        row = maxima.get(Case("gateway", target, points).name)
        if row and row["ok_per_s"]:
            rates[(target, points)] = round(row["ok_per_s"] * bench.args.latency_load, 1)
    if not rates:
        return results, {"gateway": "no closed-loop maximum to take a share of"}
    direct = Sut("collector", grpc_addr=bench.collector_addr, pids=[bench.collector.popen.pid])

    def body(gateway: Sut, round_number: int) -> None:
        for (target, points), rate in rates.items():
            direct_as: Load = SCALE_MIX if target == SCALE_MIX else "grpc"
            pair = [(gateway, "gateway", target), (direct, "direct", direct_as)]
            for sut, via, sent_as in pair[round_number % 2 :] + pair[: round_number % 2]:
                case = Case(sut.name, sent_as, points, gzip=sent_as == SCALE_MIX)
                m = bench.measure(sut, case, round_number, rate)
                label = f"latency {via} {_path(target, points)}"
                results.append(dataclasses.replace(m, label=label))
                _progress(results[-1])

    return results, run_blocks(bench, ["gateway"], rounds, body)


def matches(match: str, name: str) -> bool:
    """`--match`: any of its comma-separated texts is in `name` (empty: every name)."""
    return any(text in name for text in match.split(","))


def _path(target: Load, points: int) -> str:
    return SCALE_MIX if target == SCALE_MIX else f"{target} {points}p"


def latency_rows(measurements: list[Measurement]) -> list[dict[str, Any]]:
    """Per path: medians through the gateway and direct, and the median of the per-round
    differences (the two runs of a round are adjacent in time)."""
    rows = []
    for target, points in LATENCY_PATHS:
        path = _path(target, points)
        gateway = {m.round: m for m in measurements if m.label == f"latency gateway {path}"}
        direct = {m.round: m for m in measurements if m.label == f"latency direct {path}"}
        if not gateway or not direct:
            continue
        row: dict[str, Any] = {"path": path, "rate": next(iter(gateway.values())).rate}
        for q in ("p50", "p99"):
            g = {r: v for r, m in gateway.items() if (v := getattr(m.result.latency_ms, q))}
            d = {r: v for r, m in direct.items() if (v := getattr(m.result.latency_ms, q))}
            added = [g[r] - d[r] for r in g if r in d]
            row[f"gateway_{q}_ms"] = statistics.median(g.values()) if g else None
            row[f"direct_{q}_ms"] = statistics.median(d.values()) if d else None
            row[f"added_{q}_ms"] = statistics.median(added) if added else None
        # The gateway's CPU per request at this rate, and the Collector's alone.
        for via, runs_via in (("gateway", gateway), ("direct", direct)):
            costs = [c for m in runs_via.values() if (c := m.figures()["cpu_us_per_req"])]
            row[f"{via}_cpu_us_per_req"] = statistics.median(costs) if costs else None
        runs = [*gateway.values(), *direct.values()]
        row["refused"] = {k: v for m in runs for k, v in m.result.refused.items()}
        row["unsent"] = sum(m.result.unsent for m in runs)
        # The latency of a run that could not keep up with its rate is queueing, not
        # the gateway's added latency: such a row says so.
        achieved = [m.result.ok_per_s / m.rate for m in runs]
        row["achieved_min"] = min(achieved)
        row["valid"] = min(achieved) >= ACHIEVED_MIN and row["unsent"] == 0
        row["other_max"] = max(max(m.other_sut_cores, m.other_load_cores) for m in runs)
        row["lag_p99_ms_max"] = max(m.result.lag_ms.p99 or 0.0 for m in runs)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run both phases, print the tables, write bench/results/ingest.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round (~1 min)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per case")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each")
    parser.add_argument("--concurrency", type=int, default=64, help="closed-loop workers")
    parser.add_argument("--open-concurrency", type=int, default=256, help="open loop: in flight")
    parser.add_argument("--conns", type=int, default=8, help="gRPC connections of the generator")
    parser.add_argument("--tenants", type=int, default=4, help="keys the load rotates over")
    parser.add_argument("--latency-load", type=float, default=0.5, help="share of the maximum")
    parser.add_argument(
        "--scale-rate", type=float, default=SCALE_RATE, help="open loop of the scale mix, req/s"
    )
    parser.add_argument("--only", default=",".join(BLOCKS), help="SUTs to run, comma-separated")
    parser.add_argument(
        "--match", default="", help="only the cases whose name holds this text (or any of a,b)"
    )
    parser.add_argument("--no-latency", action="store_true", help="skip the open-loop phase")
    parser.add_argument("--sut-cpus", default="0", help="CPUs of the SUT (taskset list)")
    parser.add_argument("--load-cpus", default="1", help="CPUs of the load generator")
    parser.add_argument("--collector-cpus", default="1", help="CPUs of the Collector")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 1.5, 0.5
    names = [name for name in args.only.split(",") if name]
    if unknown := set(names) - set(BLOCKS):
        parser.error(f"unknown SUTs {sorted(unknown)}; choose from {', '.join(BLOCKS)}")
    try:
        cpus = [cpu_list(c) for c in (args.sut_cpus, args.load_cpus, args.collector_cpus)]
    except ValueError:
        parser.error("--*-cpus take CPU lists like 0, 2,3 or 2-3")
    if not set.union(*cpus) <= os.sched_getaffinity(0) or cpus[0] & (cpus[1] | cpus[2]):
        parser.error("the SUT's CPUs must exist and be apart from the generator's and Collector's")
    os.sched_setaffinity(0, cpu_list(args.load_cpus))  # this script stays off the SUT's core
    # SIGTERM, like Ctrl-C, stops every process the benchmark started (the finally below).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    load_before = os.getloadavg()
    bench = Bench(args)
    latency_measured: list[Measurement] = []
    try:
        measured, failures = throughput_phase(bench, names, args.rounds)
        rows = medians(measured)
        if not args.no_latency and "gateway" in names:
            latency_measured, more = latency_phase(bench, rows, args.rounds)
            failures |= {f"latency {name}": reason for name, reason in more.items()}
    finally:
        bench.stack.stop_all()
    latency = latency_rows(latency_measured)
    placement = f"SUT {args.sut_cpus}, generator {args.load_cpus}, Collector {args.collector_cpus}"
    print_tables(rows, latency, failures, placement)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": _git_revision(),
        "machine": {"cpus": os.cpu_count(), "load": [load_before, os.getloadavg()]},
        "settings": {**vars(args), "gateway_env": GATEWAY_ENV},
        "throughput": rows,
        "latency": latency,
        "failures": failures,
        "measurements": [m.to_json() for m in measured + latency_measured],
    }
    RESULTS.write_text(json.dumps(document, indent=1) + "\n")
    print(f"\nwritten: {RESULTS.relative_to(REPO)}")
    return 0


def _git_revision() -> str:
    described = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, check=False
    )
    return described.stdout.decode().strip()


if __name__ == "__main__":
    sys.exit(main())
