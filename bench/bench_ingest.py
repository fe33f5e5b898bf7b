"""OTLP ingest capacity of the gateway, side by side with baselines, in one run.

Run: `.venv/bin/python -m bench.bench_ingest` (about 15 minutes; `--quick`: one short
round, about a minute). Starts the real Collector and, one after the other, each
system under test (SUT): the gateway, the Collector alone, the bare Python gRPC hop,
the previous JSON design, gateways sharing a port, and a trivial Go server (the load
generator's own ceiling). The SUT runs on core 0; the Go load generator
(bench/loadgen) and the Collector share core 1 (`--sut-cpus`, `--load-cpus`,
`--collector-cpus` move them on a bigger machine).

Each case is a closed loop (`--concurrency` workers sending back to back) over a
measured window after a warm-up. Besides the Go generator's synthetic requests of 20
and 500 points, the `scale-mix` case sends what bench_scale's agents send (5
connectors and 5 data agents per tenant, 34.5 points per request on average, gzip,
from the real `otel_agents` instruments via bench/simagents.py), from a Python sender
(this module with `--scale-sender`) on the generator's core. A SUT's CPU is read from
/proc (utime + stime of its processes and their children) when the window opens and
closes, so figures are per
core: requests per CPU-second of the SUT, CPU µs per request. Then the latency phase:
open loop at half the gateway's median maximum, through the gateway and straight to
the Collector at the same rate; added latency = the difference; and the scale mix at
`--scale-rate` (what 10,000 agents exporting every 30 s send), whose gateway CPU per
request is the cost of a real request in production. Cases repeat
`--rounds` times in a rotating order; tables show medians. Results:
bench/results/ingest.json. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if __package__ in (None, ""):  # run as a file: make `bench` and `scripts` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadgen import LoadOptions, LoadResult, Target, loadgen_binary, run_loadgen
from gateway import tenants
from scripts.localstack import REPO, LocalStack, Process, collector_binary, free_port, http_get

RESULTS = REPO / "bench" / "results" / "ingest.json"
RUN_DIR = REPO / ".run" / "bench-ingest"
GATEWAY_ENV = {
    # Limits stay on (auth, rate, series, points, sizes, tenant stamping); only the
    # rate limit is raised above what the benchmark sends. Defaults kept: 10,000
    # active series per tenant (the load has points x 2 agents <= 1,000 per tenant),
    # 10,000 points and 8 MiB per request.
    "GATEWAY_RATE_LIMIT_REQUESTS_PER_SECOND": "1000000",
    "GATEWAY_RATE_LIMIT_BURST": "1000000",
    # All the load comes from one address (loopback): no cap per address.
    "GATEWAY_MAX_GRPC_CALLS_PER_PEER": "0",
    "GATEWAY_MAX_HTTP_CONNECTIONS_PER_PEER": "0",
}
REUSE_PORT_ENV = {"GATEWAY_GRPC_REUSE_PORT": "true"}
TICKS = os.sysconf("SC_CLK_TCK")
SCALE_MIX: Literal["scale-mix"] = "scale-mix"
SCALE_TENANTS = 100
"""The scale mix's tenants, 10 agents each (bench_scale's 1,000-agent step)."""
SCALE_RATE = 10_000 / 30
"""Requests/s of 10,000 agents exporting every 30 s: the scale target's load."""
Load = Target | Literal["scale-mix"]


@dataclass(frozen=True)
class Case:
    """One load shape against one SUT."""

    sut: str
    target: Load
    points: int
    gzip: bool = False

    @property
    def name(self) -> str:
        """E.g. `gateway grpc 20p gzip`, `gateway scale-mix gzip`."""
        if self.target == SCALE_MIX:
            return f"{self.sut} {SCALE_MIX} gzip"
        return f"{self.sut} {self.target} {self.points}p" + (" gzip" if self.gzip else "")


def _otlp(sut: str, *targets: Target) -> list[Case]:
    return [Case(sut, t, p, gz) for t in targets for p in (20, 500) for gz in (False, True)]


BLOCKS: dict[str, list[Case]] = {
    "gateway": [*_otlp("gateway", "grpc", "http"), Case("gateway", SCALE_MIX, 0, True)],
    "collector": [*_otlp("collector", "grpc"), Case("collector", SCALE_MIX, 0, True)],
    "bare_hop": [Case("bare_hop", "grpc", 20), Case("bare_hop", "grpc", 500)],
    "previous_design": [
        Case("previous_design", "legacy-json", 20),
        Case("previous_design", "legacy-json", 7),
    ],
    "gateway_x1": [Case("gateway_x1", "grpc", 20)],
    "gateway_x2": [Case("gateway_x2", "grpc", 20)],
    "sink": [Case("sink", "grpc", 20), Case("sink", "grpc", 500), Case("sink", "http", 20)],
}
"""Throughput cases per SUT; `collector` is the Collector alone (no gateway)."""
LATENCY_PATHS: list[tuple[Load, int]] = [
    ("grpc", 20),
    ("grpc", 500),
    ("http", 20),
    (SCALE_MIX, 0),
]
"""Open-loop paths: the first three at a share of the maximum, the scale mix at --scale-rate."""
ACHIEVED_MIN = 0.95
"""An open-loop run that answered OK less than this share of its rate was overloaded."""
GENERATOR_LAG_MS = 1.0
"""A p99 send lag above this (the generator behind its schedule) makes a latency suspect."""
BUSY_CORES = 0.1
"""Other work on the benchmark's cores above this (cores' worth) makes a latency suspect."""


# -- processes and their CPU ----------------------------------------------------------


def _stat(pid: int) -> tuple[int, float] | None:
    """(ppid, CPU seconds incl. reaped children) of a process; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    # After the name: state, ppid, ..., utime (14th field), stime, cutime, cstime.
    return int(fields[1]), sum(int(f) for f in fields[11:15]) / TICKS


def tree_cpu_seconds(roots: list[int]) -> list[float]:
    """CPU seconds of each root process and its live descendants (uvicorn workers, ...),
    from one pass over /proc."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            parents[int(entry)], cpu[int(entry)] = stat
    totals = dict.fromkeys(roots, 0.0)
    for pid, seconds in cpu.items():
        ancestor = pid
        while ancestor not in totals and ancestor in parents and ancestor > 1:
            ancestor = parents[ancestor]
        if ancestor in totals:
            totals[ancestor] += seconds
    return [totals[root] for root in roots]


def busy_seconds(cpus: set[int]) -> float:
    """CPU seconds `cpus` spent not idle since boot (/proc/stat: all but idle and iowait)."""
    busy = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
            busy += sum(ticks) - ticks[3] - ticks[4]
    return busy / TICKS


def _runs_on(pid: int, cpus: set[int]) -> bool:
    try:
        return os.sched_getaffinity(pid) <= cpus
    except OSError:
        return False


def cpus_allowed(pid: int) -> str:
    """The process's CPU affinity as the kernel shows it (e.g. `0`)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    return "?"


def cpu_list(text: str) -> set[int]:
    """`0`, `2,3` or `2-3` (taskset's list form) as a set of CPU numbers."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


@contextlib.contextmanager
def spawned_on(cpus: set[int]) -> Iterator[None]:
    """Processes started inside run on `cpus` (a child inherits its starter's affinity,
    as with `taskset -c`)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def wait_port(process: Process, port: int, timeout: float = 30.0) -> None:
    """Return once `port` accepts connections; RuntimeError if `process` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise RuntimeError(f"{process.name} exited: {process.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{process.name} not listening on {port} after {timeout:.0f} s")


def grpc_requests(metrics_url: str) -> float:
    """A gateway's gateway_requests_total over transport="grpc" (every tenant and outcome)."""
    status, body = http_get(metrics_url)
    if status != 200:
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.decode().splitlines()
        if line.startswith("gateway_requests_total{") and 'transport="grpc"' in line
    )


# -- measurements ---------------------------------------------------------------------


def _per(value: float, count: float) -> float | None:
    return value / count if count else None


@dataclass(frozen=True)
class Measurement:
    """One case in one round: what the generator saw, and what it cost the SUT and the
    Collector over the same window."""

    label: str
    case: Case
    round: int
    rate: float
    result: LoadResult
    window_s: float
    process_cpu_s: list[float]
    collector_cpu_s: float
    process_requests: list[float]
    """Gateways only: requests each process counted (whole run, warm-up included)."""
    other_sut_cores: float
    """Cores' worth of CPU the SUT's cores spent on anything but the SUT (other work on
    the machine, kernel threads): near 0 on a quiet machine."""
    other_load_cores: float
    """The same on the generator's and Collector's cores."""

    def figures(self) -> dict[str, float | None]:
        """The derived figures (None where nothing was answered OK)."""
        result, latency = self.result, self.result.latency_ms
        ok = result.ok_per_s * result.duration_s
        cpu = sum(self.process_cpu_s)
        return {
            "ok_per_s": result.ok_per_s,
            "points_per_s": result.points_per_s,
            "sut_cores": cpu / self.window_s,
            "req_per_cpu_s": _per(ok, cpu),
            "cpu_us_per_req": _per(cpu * 1e6, ok),
            "points_per_cpu_s": _per(result.points_per_s * result.duration_s, cpu),
            "collector_cores": self.collector_cpu_s / self.window_s,
            "collector_us_per_req": _per(self.collector_cpu_s * 1e6, ok),
            "loadgen_us_per_req": _per(result.cpu_s * 1e6, result.requests),
            "p50_ms": latency.p50,
            "p90_ms": latency.p90,
            "p99_ms": latency.p99,
            "max_ms": latency.max,
            "bytes_per_request": result.bytes_per_request,
            "lag_p99_ms": result.lag_ms.p99 if self.rate else None,
            "other_sut_cores": self.other_sut_cores,
            "other_load_cores": self.other_load_cores,
        }

    def to_json(self) -> dict[str, Any]:
        """Everything, the generator's own output included."""
        return {
            "label": self.label,
            "round": self.round,
            "rate": self.rate,
            **self.figures(),
            "window_s": self.window_s,
            "process_cpu_s": self.process_cpu_s,
            "collector_cpu_s": self.collector_cpu_s,
            "process_requests": self.process_requests,
            "loadgen": self.result.raw,
        }


def medians(measurements: list[Measurement]) -> dict[str, dict[str, Any]]:
    """Per label: the median of every figure over the rounds, and every refusal seen."""
    by_label: dict[str, list[Measurement]] = {}
    for m in measurements:
        by_label.setdefault(m.label, []).append(m)
    rows: dict[str, dict[str, Any]] = {}
    for label, runs in by_label.items():
        figures = [m.figures() for m in runs]
        row: dict[str, Any] = {"sut": runs[0].case.sut, "rounds": len(runs)}
        for key in figures[0]:
            values = [v for f in figures if (v := f[key]) is not None]
            row[key] = statistics.median(values) if values else None
        refused: dict[str, int] = {}
        for m in runs:
            for status, count in m.result.refused.items():
                refused[status] = refused.get(status, 0) + count
        row["refused"] = refused
        row["unsent"] = sum(m.result.unsent for m in runs)
        row["errors"] = sorted({e for m in runs for e in m.result.errors})[:5]
        row["process_requests"] = [m.process_requests for m in runs if m.process_requests]
        rows[label] = row
    return rows


# -- systems under test -------------------------------------------------------------


@dataclass
class Sut:
    """A started system under test: where the load goes and whose CPU counts."""

    name: str
    grpc_addr: str = ""
    http_url: str = ""
    pids: list[int] = field(default_factory=list)
    processes: list[Process] = field(default_factory=list)
    metrics_urls: list[str] = field(default_factory=list)

    def add(self, process: Process) -> None:
        """Count `process` as part of this SUT."""
        self.processes.append(process)
        self.pids.append(process.popen.pid)


class Bench:
    """The Collector, the tenants' keys and the load generator shared by every case."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        shutil.rmtree(RUN_DIR, ignore_errors=True)
        self.stack = LocalStack(RUN_DIR, RUN_DIR / "tenants.json")
        table, lines = tenants.TenantTable(), []
        for number in range(args.tenants):
            table, key = tenants.add_key(table, f"bench{number}")
            lines.append(f"bench{number} {key}\n")
        scale_lines = []
        for number in range(SCALE_TENANTS):
            table, key = tenants.add_key(table, f"scale{number}")
            scale_lines.append(f"scale{number} {key}\n")
        tenants.save(self.stack.tenants_file, table)
        self.keys_file = RUN_DIR / "keys.txt"
        self.keys_file.write_text("".join(lines))
        self.scale_keys_file = RUN_DIR / "scale-keys.txt"
        self.scale_keys_file.write_text("".join(scale_lines))
        self.scale_dir = RUN_DIR / "scale-mix"
        self.loadgen = loadgen_binary()
        with spawned_on(cpu_list(args.collector_cpus)):
            self.collector = self.stack.start_collector(collector_binary())
        self.stack.wait_ready(self.collector)
        self.collector_addr = f"127.0.0.1:{self.stack.ports.collector_otlp}"
        self.starters: dict[str, Callable[[Sut], None]] = {
            "gateway": lambda sut: self._gateways(sut, 1, reuse_port=False),
            "gateway_x1": lambda sut: self._gateways(sut, 1, reuse_port=True),
            "gateway_x2": lambda sut: self._gateways(sut, 2, reuse_port=True),
            "collector": self._collector_alone,
            "bare_hop": self._bare_hop,
            "previous_design": self._previous_design,
            "sink": self._sink,
        }

    def start(self, name: str) -> Sut:
        """Start the SUT `name` on the SUT core and wait until it is ready."""
        sut = Sut(name)
        try:
            with spawned_on(cpu_list(self.args.sut_cpus)):
                self.starters[name](sut)
        except BaseException:
            self.stop(sut)
            raise
        return sut

    def stop(self, sut: Sut) -> None:
        """Stop the SUT's own processes (never the shared Collector)."""
        for process in sut.processes:
            self.stack.stop(process)

    def _collector_alone(self, sut: Sut) -> None:
        sut.grpc_addr = self.collector_addr
        sut.pids.append(self.collector.popen.pid)

    def _gateways(self, sut: Sut, count: int, reuse_port: bool) -> None:
        grpc_port = free_port()
        sut.grpc_addr = f"127.0.0.1:{grpc_port}"
        for number in range(count):
            http_port = free_port()
            url = f"http://127.0.0.1:{http_port}"
            env = {
                "GATEWAY_GRPC_HOST": "127.0.0.1",
                "GATEWAY_GRPC_PORT": str(grpc_port),
                "GATEWAY_HTTP_HOST": "127.0.0.1",
                "GATEWAY_HTTP_PORT": str(http_port),
                "GATEWAY_COLLECTOR_ENDPOINT": self.collector_addr,
                "GATEWAY_TENANTS_FILE": str(self.stack.tenants_file),
                **GATEWAY_ENV,
                **(REUSE_PORT_ENV if reuse_port else {}),
            }
            argv = [sys.executable, "-m", "gateway.cli", "serve"]
            process = self.stack.start_process(f"{sut.name}-{number}", argv, env, f"{url}/healthz")
            sut.add(process)
            sut.metrics_urls.append(f"{url}/metrics")
            sut.http_url = sut.http_url or url
            self.stack.wait_ready(process, timeout=30)

    def _bare_hop(self, sut: Sut) -> None:
        port = free_port()
        argv = [sys.executable, "-m", "bench.baselines.bare_hop", "--listen"]
        argv += [f"127.0.0.1:{port}", "--collector", self.collector_addr]
        sut.add(self.stack.start_process(sut.name, argv, {}))
        sut.grpc_addr = f"127.0.0.1:{port}"
        wait_port(sut.processes[0], port)

    def _previous_design(self, sut: Sut) -> None:
        port = free_port()
        sut.http_url = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "bench.baselines.previous_design", "--port", str(port)]
        sut.add(self.stack.start_process(sut.name, argv, {}, f"{sut.http_url}/healthz"))
        self.stack.wait_ready(sut.processes[0])

    def _sink(self, sut: Sut) -> None:
        for kind in ("grpc", "http"):
            port = free_port()
            argv = [str(self.loadgen), f"-sink={kind}", f"-listen=127.0.0.1:{port}"]
            sut.add(self.stack.start_process(f"sink-{kind}", argv, {}))
            wait_port(sut.processes[-1], port)
            if kind == "grpc":
                sut.grpc_addr = f"127.0.0.1:{port}"
            else:
                sut.http_url = f"http://127.0.0.1:{port}"

    def measure(self, sut: Sut, case: Case, round_number: int, rate: float = 0.0) -> Measurement:
        """One load generator run against `sut`, with the CPU of everything involved."""
        args = self.args
        options = LoadOptions(
            target="grpc" if case.target == SCALE_MIX else case.target,
            addr=sut.grpc_addr if case.target in ("grpc", SCALE_MIX) else sut.http_url,
            keys_file=self.keys_file,
            points=case.points,
            gzip=case.gzip,
            concurrency=args.open_concurrency if rate else args.concurrency,
            conns=args.conns,
            rate=rate,
            duration_s=args.duration,
            warmup_s=args.warmup,
        )
        sut_cpus = cpu_list(args.sut_cpus)
        load_cpus = cpu_list(args.load_cpus) | cpu_list(args.collector_cpus)
        samples: dict[str, tuple[float, list[float], float, float]] = {}

        def on_phase(phase: str) -> None:
            now = time.monotonic()
            cpu = tree_cpu_seconds([*sut.pids, self.collector.popen.pid])
            samples[phase] = (now, cpu, busy_seconds(sut_cpus), busy_seconds(load_cpus))

        before = [grpc_requests(url) for url in sut.metrics_urls]
        if case.target == SCALE_MIX:
            result = run_scale_mix(
                self.scale_keys_file, self.scale_dir, options, args.load_cpus, on_phase
            )
        else:
            result = run_loadgen(
                options, binary=self.loadgen, cpus=args.load_cpus, on_phase=on_phase
            )
        split = [grpc_requests(url) - b for url, b in zip(sut.metrics_urls, before, strict=True)]
        if "measure" not in samples or "done" not in samples:
            raise RuntimeError("the load generator never reported its measured window")
        (t0, cpu0, sut0, load0), (t1, cpu1, sut1, load1) = samples["measure"], samples["done"]
        window = t1 - t0
        used = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
        on_sut = [c for pid, c in zip(sut.pids, used, strict=False) if _runs_on(pid, sut_cpus)]
        other_sut = max(0.0, sut1 - sut0 - sum(on_sut)) / window
        other_load = max(0.0, load1 - load0 - used[-1] - result.cpu_s) / window
        return Measurement(
            label=case.name,
            case=case,
            round=round_number,
            rate=rate,
            result=result,
            window_s=window,
            process_cpu_s=used[:-1],
            collector_cpu_s=used[-1],
            process_requests=split,
            other_sut_cores=other_sut,
            other_load_cores=other_load,
        )


# -- the scale mix: what bench_scale's agents send, from a Python sender ----------------


def run_scale_mix(
    keys_file: Path,
    directory: Path,
    options: LoadOptions,
    cpus: str,
    on_phase: Callable[[str], None],
) -> LoadResult:
    """Run the scale-mix sender (`--scale-sender`, pinned to `cpus`) like the Go generator:
    phases on stderr, a LoadResult document on stdout."""
    argv = ["taskset", "-c", cpus, sys.executable, "-m", "bench.bench_ingest", "--scale-sender"]
    argv += [f"--addr={options.addr}", f"--keys={keys_file}", f"--dir={directory}"]
    argv += [f"--rate={options.rate}", f"--concurrency={options.concurrency}"]
    argv += [f"--conns={options.conns}", f"--duration={options.duration_s}"]
    argv += [f"--warmup={options.warmup_s}"]
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=REPO
    )
    assert process.stderr is not None
    assert process.stdout is not None
    other: list[str] = []
    try:
        for raw in process.stderr:
            line = raw.decode(errors="replace").rstrip()
            if line.startswith("phase "):
                on_phase(line.removeprefix("phase "))
            else:
                other.append(line)
        stdout = process.stdout.read()
        process.wait(timeout=60)
    except BaseException:
        process.kill()
        process.wait()
        raise
    if process.returncode != 0:
        raise RuntimeError(f"the scale-mix sender failed: {' '.join(other)[-2000:]}")
    return LoadResult.from_json(json.loads(stdout))


def _latency_summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return dict.fromkeys(("p50", "p90", "p99", "max", "mean"))
    ordered = sorted(values)
    last = len(ordered) - 1
    return {
        "p50": ordered[last // 2] * 1e3,
        "p90": ordered[round(last * 0.9)] * 1e3,
        "p99": ordered[round(last * 0.99)] * 1e3,
        "max": ordered[-1] * 1e3,
        "mean": statistics.fmean(ordered) * 1e3,
    }


async def _send_scale_mix(args: argparse.Namespace) -> dict[str, Any]:
    """The sender: agents of bench_scale's mix (10 per tenant, every other one a data
    agent), each request rendered by the real instruments' template and sent gzip."""
    import grpc

    from bench.simagents import AGENTS_PER_TENANT, CONNECTORS_PER_TENANT, EXPORT_PATH, templates

    keys = [line.split()[-1] for line in Path(args.keys).read_text().splitlines() if line]
    args.dir.mkdir(parents=True, exist_ok=True)
    kinds = templates(args.dir)
    now = time.time_ns()
    bodies: list[tuple[bytes, int, tuple[tuple[str, str], ...]]] = []
    for index in range(len(keys) * AGENTS_PER_TENANT):
        kind = "connector" if index % AGENTS_PER_TENANT < CONNECTORS_PER_TENANT else "etl"
        template = kinds[kind]
        started = now - random.randint(60, 3600) * 1_000_000_000
        body = template.render(f"scale-{index}", started, now, 1.0 + index % 7)
        auth = (("authorization", f"Bearer {keys[index // AGENTS_PER_TENANT]}"),)
        bodies.append((body, template.data_points, auth))
    random.Random(7).shuffle(bodies)
    channels = [
        grpc.aio.insecure_channel(args.addr, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(args.conns)
    ]
    calls = [c.unary_unary(EXPORT_PATH, None, None) for c in channels]
    statuses: dict[str, int] = {}
    latencies: list[float] = []
    lags: list[float] = []
    counted = {"requests": 0, "points": 0, "bytes": 0}
    measuring = False
    cursor = 0

    async def send(scheduled: float) -> None:
        nonlocal cursor
        body, points, auth = bodies[cursor % len(bodies)]
        call = calls[cursor % len(calls)]
        cursor += 1
        lag = time.monotonic() - scheduled
        status = "OK"
        try:
            await call(body, metadata=auth, timeout=10, compression=grpc.Compression.Gzip)
        except grpc.aio.AioRpcError as exc:
            status = exc.code().name
        if measuring:
            latencies.append(time.monotonic() - scheduled)
            lags.append(lag)
            statuses[status] = statuses.get(status, 0) + 1
            counted["requests"] += 1
            counted["bytes"] += len(body)
            if status == "OK":
                counted["points"] += points

    stop_at = time.monotonic() + args.warmup + args.duration
    unsent = 0
    cpu_started = 0.0

    def begin() -> None:
        nonlocal measuring, cpu_started
        measuring = True
        cpu_started = time.process_time()
        print("phase measure", file=sys.stderr, flush=True)

    loop = asyncio.get_running_loop()
    loop.call_later(args.warmup, begin)
    if args.rate:
        in_flight: set[asyncio.Task[None]] = set()
        due = time.monotonic()
        while due < stop_at:
            due += random.expovariate(args.rate)
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if len(in_flight) >= args.concurrency:
                unsent += measuring
                continue
            task = loop.create_task(send(due))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        measuring = False
    else:

        async def worker() -> None:
            while time.monotonic() < stop_at:
                await send(time.monotonic())

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        measuring = False
    cpu = time.process_time() - cpu_started
    print("phase done", file=sys.stderr, flush=True)
    for channel in channels:
        await channel.close(None)
    ok = statuses.get("OK", 0)
    seconds = args.duration
    return {
        "requests": counted["requests"],
        "ok": ok,
        "statuses": statuses,
        "requests_per_s": counted["requests"] / seconds,
        "ok_per_s": ok / seconds,
        "points_per_s": counted["points"] / seconds,
        "latency_ms": _latency_summary(latencies),
        "lag_ms": _latency_summary(lags),
        "completed_per_s": counted["requests"] / seconds,
        "cpu_s": cpu,
        "duration_s": seconds,
        "bytes_per_request": counted["bytes"] / max(1, counted["requests"]),
        "retries": 0,
        "unsent": unsent,
        "errors": [],
    }


def scale_sender_main(argv: list[str]) -> int:
    """`--scale-sender`: send the scale mix, print a LoadResult document."""
    parser = argparse.ArgumentParser(prog="bench_ingest --scale-sender")
    parser.add_argument("--scale-sender", action="store_true")
    parser.add_argument("--addr", required=True)
    parser.add_argument("--keys", required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--conns", type=int, default=8)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(_send_scale_mix(args))))
    return 0


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
        f"{_fmt(f['cpu_us_per_req'], 0)} µs/req  p99 {_fmt(f['p99_ms'], 2)} ms  "
        f"other: {f['other_sut_cores']:.2f} + {f['other_load_cores']:.2f} cores  "
        f"{_refusals(m.result.refused)}",
        file=sys.stderr,
    )


def throughput_phase(
    bench: Bench, names: list[str], rounds: int
) -> tuple[list[Measurement], dict[str, str]]:
    """Closed-loop maximum of every case of every SUT in `names`."""
    results: list[Measurement] = []

    def body(sut: Sut, round_number: int) -> None:
        cases = [case for case in BLOCKS[sut.name] if bench.args.match in case.name]
        if not cases:
            return
        shift = round_number % len(cases)
        for case in cases[shift:] + cases[:shift]:
            results.append(bench.measure(sut, case, round_number))
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
        if bench.args.match not in _path(target, points):
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


# -- report ---------------------------------------------------------------------------

Column = tuple[str, int]
"""Header and decimals (-1: a left-aligned text column)."""


def table(title: str, columns: list[Column], rows: list[list[Any]]) -> None:
    """Print `rows` under `title` (nothing when there are none); None shows as '-'."""
    if not rows:
        return
    cells = [
        [
            str(v) if d < 0 else "-" if v is None else f"{v:,.{d}f}"
            for v, (_, d) in zip(row, columns, strict=True)
        ]
        for row in rows
    ]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, (h, _) in enumerate(columns)]
    print(f"\n{title}")
    for line in [[h for h, _ in columns], *cells]:
        print(
            "  ".join(
                f"{c:<{w}}" if d < 0 else f"{c:>{w}}"
                for c, w, (_, d) in zip(line, widths, columns, strict=True)
            ).rstrip()
        )


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _refusals(refused: dict[str, int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(refused.items()))


LEGEND = """\
  req/s: answered OK per second (wall). SUT cores: the SUT's CPU seconds per second.
  req/CPU-s: OK requests per CPU-second of the SUT, i.e. requests/s per core. µs/req: the
  SUT's CPU per OK request; coll: the Collector's; gen: the load generator's. other: CPU
  the SUT's cores spent on anything else (other work on the machine): ~0 when quiet."""


def print_tables(
    rows: dict[str, dict[str, Any]],
    latency: list[dict[str, Any]],
    failures: dict[str, str],
    cpus: str,
) -> None:
    """The readable report: throughput, ratios to the Collector alone, scaling, latency."""
    keys = ["ok_per_s", "points_per_s", "sut_cores", "req_per_cpu_s", "cpu_us_per_req"]
    keys += ["collector_us_per_req", "loadgen_us_per_req", "p50_ms", "p99_ms", "other_sut_cores"]
    table(
        f"Throughput, closed loop (medians); CPUs: {cpus}",
        [
            *[("case", -1), ("req/s", 0), ("points/s", 0), ("SUT cores", 2)],
            *[("req/CPU-s", 0), ("µs/req", 0), ("coll µs/req", 0)],
            *[("gen µs/req", 1), ("p50 ms", 2), ("p99 ms", 2), ("other", 2), ("refused", -1)],
        ],
        [[name, *(r[k] for k in keys), _refusals(r["refused"])] for name, r in rows.items()],
    )
    if rows:
        print(LEGEND)
    ratios = []
    for load in ("20p", "20p gzip", "500p", "500p gzip"):
        gateway, alone = rows.get(f"gateway grpc {load}"), rows.get(f"collector grpc {load}")
        if gateway and alone and gateway["cpu_us_per_req"] and alone["cpu_us_per_req"]:
            own, base = gateway["cpu_us_per_req"], alone["cpu_us_per_req"]
            whole = own + (gateway["collector_us_per_req"] or 0)
            ratios.append([load, own, base, own / base, whole / base, base / own])
    table(
        "The gateway against the Collector alone, same gRPC load: CPU µs per request",
        [
            *[("load", -1), ("gateway", 0), ("Collector alone", 0)],
            *[("gateway ÷ alone", 1), ("(gateway + its Collector) ÷ alone", 1)],
            ("gateway req/CPU-s ÷ alone's", 3),
        ],
        ratios,
    )
    table(
        "Gateways sharing one gRPC port (GATEWAY_GRPC_REUSE_PORT), requests per process",
        [("case", -1), ("req/s", 0), ("req/CPU-s", 0), ("split by round", -1)],
        [
            [name, r["ok_per_s"], r["req_per_cpu_s"], str(r["process_requests"])]
            for name, r in rows.items()
            if r["sut"] in ("gateway_x1", "gateway_x2")
        ],
    )
    if latency:
        q = ["gateway_p50_ms", "gateway_p99_ms", "direct_p50_ms", "direct_p99_ms"]
        q += ["added_p50_ms", "added_p99_ms", "gateway_cpu_us_per_req", "direct_cpu_us_per_req"]
        table(
            "Added latency, open loop (medians; direct = the Collector's OTLP/gRPC receiver)",
            [
                *[("path", -1), ("rate/s", 0), ("gw p50", 2), ("gw p99", 2)],
                *[("direct p50", 2), ("direct p99", 2), ("+p50 ms", 2)],
                *[("+p99 ms", 2), ("gw µs/req", 0), ("coll µs/req", 0)],
                *[("lowest achieved", 2), ("note", -1)],
            ],
            [
                [r["path"], r["rate"], *(r[k] for k in q), r["achieved_min"], _latency_note(r)]
                for r in latency
            ],
        )
    print_targets(rows, latency)
    for name, reason in failures.items():
        print(f"\nNOT MEASURED {name}: {reason}")


TARGETS = [
    ("gateway grpc 20p", "req/s", "req_per_cpu_s", "ok_per_s", 3_000),
    ("gateway grpc 500p", "points/s", "points_per_cpu_s", "points_per_s", 1_000_000),
]
"""Targets for one gateway process on one core: case, unit, figures, at least."""
HTTP_BASELINE = ("gateway http 20p", "previous_design legacy-json 20p")
"""OTLP/HTTP per core must reach the previous design's figure measured in the same run."""
ADDED_P99_TARGET_MS = 5.0
REAL_REQUEST_TARGET_US = 1_000
"""Gateway CPU per request of the scale mix (34.5 points, gzip), at most."""


def _latency_note(row: dict[str, Any]) -> str:
    notes = [] if row["valid"] else ["OVERLOADED: answers fell behind the rate, not a latency"]
    if row["other_max"] > BUSY_CORES:
        notes.append(f"BUSY machine: other work took up to {row['other_max']:.2f} of a core")
    if row["lag_p99_ms_max"] > GENERATOR_LAG_MS:
        notes.append(f"the generator sent up to {row['lag_p99_ms_max']:.1f} ms late (p99)")
    if row["unsent"]:
        notes.append(f"unsent {row['unsent']}")
    return " ".join([*notes, _refusals(row["refused"])]).strip()


def print_targets(rows: dict[str, dict[str, Any]], latency: list[dict[str, Any]]) -> None:
    """Each target beside the figure per core of the gateway and the one seen (wall)."""
    lines: list[list[Any]] = []
    for case, unit, per_core, wall, goal in TARGETS:
        if row := rows.get(case):
            lines.append([f"{case}, {unit}", row[per_core], row[wall], f">= {goal:,}"])
    http, baseline = (rows.get(case) for case in HTTP_BASELINE)
    if http and baseline and baseline["req_per_cpu_s"]:
        floor = f">= {baseline['req_per_cpu_s']:,.0f} (previous design, this run)"
        lines.append([f"{HTTP_BASELINE[0]}, req/s", http["req_per_cpu_s"], http["ok_per_s"], floor])
    if real := rows.get(f"gateway {SCALE_MIX} gzip"):
        ceiling = f"<= {REAL_REQUEST_TARGET_US:,} (closed loop)"
        lines.append([f"{SCALE_MIX}, gateway CPU µs/req", real["cpu_us_per_req"], None, ceiling])
    for row in latency:
        if row["path"] == "grpc 20p":
            figure = f"added p99 ms, grpc 20p at {row['rate']:,.0f}/s"
            target = f"<= {ADDED_P99_TARGET_MS:g}" + ("" if row["valid"] else " (OVERLOADED run)")
            lines.append([figure, None, row["added_p99_ms"], target])
        if row["path"] == SCALE_MIX:
            figure = f"{SCALE_MIX}, gateway CPU µs/req at {row['rate']:,.0f}/s"
            target = f"<= {REAL_REQUEST_TARGET_US:,}"
            lines.append([figure, row["gateway_cpu_us_per_req"], None, target])
    table(
        "Targets (one gateway process): per core = per CPU-second of the gateway; seen = wall",
        [("figure", -1), ("per core", 0), ("seen", 1), ("target", -1)],
        lines,
    )


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
    parser.add_argument("--match", default="", help="only the cases whose name holds this text")
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
    if "--scale-sender" in sys.argv[1:]:
        sys.exit(scale_sender_main(sys.argv[1:]))
    sys.exit(main())
