"""What share of the demo connector's CPU its instrumentation takes, at full speed.

Run: `.venv/bin/python -m bench.bench_connector_cpu` (about 3 minutes; `--quick`: about
30 s). Two demo connector processes (`scripts/demo_connector.py` with
DEMO_CONNECTOR_FULL_SPEED=1: the next query as soon as the last one returns) stream
Arrow batches, each to its own demo upstream: one instrumented as in `make demo`
(setup_metrics exporting every 5 s, the counting client interceptor with Arrow row
counting, the connectivity watch, the certificate gauge), one with
DEMO_CONNECTOR_INSTRUMENT=0 (the same loop, no metrics at all).

They take turns: in each round one runs for `--round-seconds` while the other is
stopped (SIGSTOP/SIGCONT), in alternating order, so drift and load from other processes
hit both alike. A connector's CPU is read from /proc/<pid>/stat (utime + stime, all
its threads) while it is stopped; the batches, calls and rows come from its upstream,
which runs in this process and counts what it received. The instrumented connector
exports to a stub OTLP receiver here (it answers OK), so the export cycle's cost is
in the figures too.

Instrumentation share = (CPU per batch on - CPU per batch off) / CPU per batch on,
from the totals over all rounds; the per-round paired shares show the noise. Batch
sizes are random (100-5,000 rows, as the demo makes them), so CPU per 1,000 rows is
given too: it removes most of the batch-size noise. Prints a table and writes
bench/results/bench_connector_cpu.json; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent import futures
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc

from bench.procstat import cpu_seconds, process_state
from scripts.demo_upstream import Upstream, serve
from stack.local import LocalStack, Process

RESULTS = Path(__file__).resolve().parent / "results" / "bench_connector_cpu.json"
EXPORT_SERVICE = "opentelemetry.proto.collector.metrics.v1.MetricsService"
VARIANTS = ("on", "off")
EXPORT_INTERVAL_MS = 5000  # what `make demo` gives its agents (scripts/demo.py)
TARGET_SHARE = 0.02


class CountingUpstream(Upstream):
    """The demo upstream, also counting the calls it served and the batches it read."""

    def __init__(self) -> None:
        """No failure-rate change: the demo's 3 % of refused calls stay in."""
        super().__init__()
        self.batches = 0
        self.calls = 0
        self._count_lock = threading.Lock()

    def upload(self, payloads: Iterable[bytes], context: grpc.ServicerContext) -> bytes:
        """A client stream of IPC payloads, each counted as it is read."""
        answer = super().upload(self._counted(payloads), context)
        with self._count_lock:
            self.calls += 1
        return answer

    def put(self, payload: bytes, context: grpc.ServicerContext) -> bytes:
        """One IPC payload."""
        answer = super().put(payload, context)
        with self._count_lock:
            self.calls += 1
            self.batches += 1
        return answer

    def _counted(self, payloads: Iterable[bytes]) -> Iterator[bytes]:
        for payload in payloads:
            with self._count_lock:
                self.batches += 1
            yield payload

    def totals(self) -> tuple[int, int, int]:
        """(calls, batches, rows) received so far."""
        with self._count_lock:
            return self.calls, self.batches, self.rows


class OtlpSink:
    """Answers every OTLP metrics export with an empty (OK) response and counts them."""

    def __init__(self) -> None:
        """Start serving on a free loopback port."""
        self.exports = 0
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=2), options=[("grpc.so_reuseport", 0)]
        )
        handler = grpc.unary_unary_rpc_method_handler(self._export)
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(EXPORT_SERVICE, {"Export": handler})]
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _export(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.exports += 1
        return b""  # an empty ExportMetricsServiceResponse


@dataclass
class Round:
    """One turn of one connector: its CPU and what its upstream received meanwhile."""

    variant: str
    wall_s: float
    cpu_s: float
    calls: int
    batches: int
    rows: int


def pause(pid: int) -> None:
    """SIGSTOP `pid` and wait until the kernel says it is stopped."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while process_state(pid) != "T":
        if time.monotonic() > deadline:
            raise RuntimeError(f"process {pid} did not stop")
        time.sleep(0.001)


def start_connectors(
    stack: LocalStack, upstream_ports: dict[str, int], sink_port: int
) -> dict[str, Process]:
    """The two demo connectors, at full speed, instrumented and not."""
    connectors = {}
    for variant in VARIANTS:
        env = {
            "DEMO_UPSTREAM_ADDRESS": f"127.0.0.1:{upstream_ports[variant]}",
            "DEMO_CONNECTOR_FULL_SPEED": "1",
            "DEMO_CONNECTOR_INSTRUMENT": "1" if variant == "on" else "0",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}",
            "OTEL_AGENTS_API_KEY": "bench-not-checked",
            "OTEL_METRIC_EXPORT_INTERVAL": str(EXPORT_INTERVAL_MS),
            "OTEL_SERVICE_NAME": f"bench-connector-{variant}",
        }
        connectors[variant] = stack.start_process(
            f"connector-{variant}", [sys.executable, "-m", "scripts.demo_connector"], env
        )
    return connectors


def wait_sending(upstreams: dict[str, CountingUpstream], connectors: dict[str, Process]) -> None:
    """Until every connector's upstream has received a batch."""
    deadline = time.monotonic() + 60
    while any(upstream.totals()[1] == 0 for upstream in upstreams.values()):
        for process in connectors.values():
            if process.popen.poll() is not None:
                raise RuntimeError(f"{process.name} exited:\n{process.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError("the connectors sent nothing within 60 s")
        time.sleep(0.1)


def run_turn(variant: str, pid: int, upstream: CountingUpstream, seconds: float) -> Round:
    """Let one (stopped) connector run for `seconds`, stop it again and measure."""
    cpu_before = cpu_seconds(pid)
    calls_before, batches_before, rows_before = upstream.totals()
    started = time.monotonic()
    os.kill(pid, signal.SIGCONT)
    time.sleep(seconds)
    pause(pid)
    wall = time.monotonic() - started
    time.sleep(0.05)  # what was already on the wire reaches the upstream
    calls, batches, rows = upstream.totals()
    return Round(
        variant,
        wall,
        cpu_seconds(pid) - cpu_before,
        calls - calls_before,
        batches - batches_before,
        rows - rows_before,
    )


def summarize(rounds: list[Round]) -> dict[str, Any]:
    """Totals per variant, the instrumentation share, and the per-round paired shares."""
    totals: dict[str, dict[str, float]] = {}
    for variant in VARIANTS:
        mine = [r for r in rounds if r.variant == variant]
        cpu, wall = sum(r.cpu_s for r in mine), sum(r.wall_s for r in mine)
        calls, batches = sum(r.calls for r in mine), sum(r.batches for r in mine)
        rows = sum(r.rows for r in mine)
        totals[variant] = {
            "rounds": len(mine),
            "running_s": wall,
            "cpu_s": cpu,
            "calls": calls,
            "batches": batches,
            "rows": rows,
            "cpu_us_per_batch": cpu / batches * 1e6,
            "cpu_us_per_1000_rows": cpu / rows * 1e9,
            "cpu_us_per_call": cpu / calls * 1e6,
            "batches_per_s": batches / wall,
            "cpu_utilisation": cpu / wall,
        }
    on, off = totals["on"], totals["off"]
    paired_batch, paired_rows = [], []
    ons = [r for r in rounds if r.variant == "on"]
    offs = [r for r in rounds if r.variant == "off"]
    for r_on, r_off in zip(ons, offs, strict=True):
        per_batch_on, per_batch_off = r_on.cpu_s / r_on.batches, r_off.cpu_s / r_off.batches
        per_row_on, per_row_off = r_on.cpu_s / r_on.rows, r_off.cpu_s / r_off.rows
        paired_batch.append((per_batch_on - per_batch_off) / per_batch_on)
        paired_rows.append((per_row_on - per_row_off) / per_row_on)
    return {
        "variants": totals,
        "share_per_batch": (on["cpu_us_per_batch"] - off["cpu_us_per_batch"])
        / on["cpu_us_per_batch"],
        "share_per_1000_rows": (on["cpu_us_per_1000_rows"] - off["cpu_us_per_1000_rows"])
        / on["cpu_us_per_1000_rows"],
        "instrumentation_us_per_batch": on["cpu_us_per_batch"] - off["cpu_us_per_batch"],
        "paired_share_per_batch": _spread(paired_batch),
        "paired_share_per_1000_rows": _spread(paired_rows),
    }


def _spread(values: list[float]) -> dict[str, float]:
    quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return {"median": statistics.median(values), "q1": quartiles[0], "q3": quartiles[2]}


def print_table(summary: dict[str, Any], exports: int) -> None:
    """The figures, readable."""
    rows = summary["variants"]
    print(f"\n{'':<28}{'instrumented':>14}{'plain':>14}")
    for key, label, fmt in (
        ("rounds", "rounds", "{:.0f}"),
        ("running_s", "running time (s)", "{:.1f}"),
        ("batches", "batches", "{:.0f}"),
        ("batches_per_s", "batches/s", "{:.1f}"),
        ("cpu_utilisation", "CPU (cores)", "{:.2f}"),
        ("cpu_us_per_batch", "CPU µs per batch", "{:.1f}"),
        ("cpu_us_per_1000_rows", "CPU µs per 1000 rows", "{:.1f}"),
        ("cpu_us_per_call", "CPU µs per call", "{:.1f}"),
    ):
        print(f"  {label:<26}{fmt.format(rows['on'][key]):>14}{fmt.format(rows['off'][key]):>14}")
    pb, pr = summary["paired_share_per_batch"], summary["paired_share_per_1000_rows"]
    print(
        f"\n  instrumentation share, per batch:      {summary['share_per_batch']:+.2%}"
        f"  (per round: median {pb['median']:+.2%}, quartiles {pb['q1']:+.2%} .. {pb['q3']:+.2%})"
    )
    print(
        f"  instrumentation share, per 1000 rows:  {summary['share_per_1000_rows']:+.2%}"
        f"  (per round: median {pr['median']:+.2%}, quartiles {pr['q1']:+.2%} .. {pr['q3']:+.2%})"
    )
    print(
        f"  instrumentation CPU per batch:         "
        f"{summary['instrumentation_us_per_batch']:+.1f} µs   (target: share <= {TARGET_SHARE:.0%})"
    )
    print(f"  exports the instrumented connector sent: {exports}")


def main() -> None:
    """Run the rounds, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (~30 s)")
    parser.add_argument("--rounds", type=int, help="rounds (each runs both connectors once)")
    parser.add_argument("--round-seconds", type=float, help="running time of one turn")
    args = parser.parse_args()
    rounds_wanted = args.rounds or (6 if args.quick else 24)
    turn_seconds = args.round_seconds or (1.5 if args.quick else 3.0)

    started = time.monotonic()
    load_before = os.getloadavg()
    upstreams = {variant: CountingUpstream() for variant in VARIANTS}
    servers = {variant: serve("127.0.0.1:0", upstreams[variant]) for variant in VARIANTS}
    sink = OtlpSink()
    run_dir = Path(tempfile.mkdtemp(prefix="bench-connector-cpu-"))
    stack = LocalStack(run_dir, tenants_file=run_dir / "tenants-unused.json")
    connectors: dict[str, Process] = {}
    rounds: list[Round] = []
    try:
        connectors = start_connectors(stack, {v: s[1] for v, s in servers.items()}, sink.port)
        wait_sending(upstreams, connectors)
        time.sleep(1.0)  # both warm up side by side
        pids = {variant: process.popen.pid for variant, process in connectors.items()}
        for pid in pids.values():
            pause(pid)
        print(
            f"{rounds_wanted} rounds of {turn_seconds:.1f} s per connector, "
            f"load average {load_before[0]:.2f}"
        )
        for number in range(rounds_wanted):
            order = VARIANTS if number % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                rounds.append(run_turn(variant, pids[variant], upstreams[variant], turn_seconds))
    finally:
        for process in connectors.values():
            if process.popen.poll() is None:
                os.kill(process.popen.pid, signal.SIGCONT)  # a stopped process ignores SIGTERM
        stack.stop_all()
        for server, _ in servers.values():
            server.stop(None)
        sink.server.stop(None)

    summary = summarize(rounds)
    print_table(summary, sink.exports)
    result = {
        "benchmark": "bench_connector_cpu",
        "quick": args.quick,
        "round_seconds": turn_seconds,
        "export_interval_ms": EXPORT_INTERVAL_MS,
        "load_average_before": load_before[0],
        "load_average_after": os.getloadavg()[0],
        "exports_received": sink.exports,
        "target_share": TARGET_SHARE,
        **summary,
        "rounds": [asdict(r) for r in rounds],
        "logs": str(run_dir),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n({time.monotonic() - started:.0f} s; figures in {RESULTS}, logs in {run_dir})")


if __name__ == "__main__":
    main()
