"""The systems under test, started one at a time beside the shared Collector and generator."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from bench.ingest.cases import GATEWAY_ENV, REUSE_PORT_ENV, RUN_DIR, SCALE_MIX, SCALE_TENANTS, Case
from bench.ingest.measure import Measurement
from bench.ingest.sender import run_scale_mix
from bench.loadgen import LoadOptions, loadgen_binary, run_loadgen
from bench.procstat import busy_seconds, cpu_list, runs_on, tree_cpu_seconds
from gateway import tenants
from stack.local import LocalStack, Process, collector_binary, free_port, http_get
from stack.redis_server import RedisServer


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


def wait_answers(process: Process, url: str, timeout: float = 30.0) -> None:
    """Return once `url` answers 200; RuntimeError if `process` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise RuntimeError(f"{process.name} exited: {process.log_tail()}")
        if http_get(url, timeout=1.0)[0] == 200:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{process.name}: no answer at {url} after {timeout:.0f} s")


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
    store: RedisServer | None = None
    """The SUT's own state store (GATEWAY_STATE_URL), measured apart from the SUT."""

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
            "gateway_redis": lambda sut: self._gateways(sut, 1, reuse_port=False, redis=True),
            "gateway_redis_x2": lambda sut: self._gateways(sut, 1, False, redis=True, workers=2),
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
        if sut.store is not None:
            sut.store.stop()

    def _collector_alone(self, sut: Sut) -> None:
        sut.grpc_addr = self.collector_addr
        sut.pids.append(self.collector.popen.pid)

    def _gateways(
        self, sut: Sut, count: int, reuse_port: bool, redis: bool = False, workers: int = 1
    ) -> None:
        """`count` gateways (each `serve --workers N` when `workers` > 1), their state in
        a redis-server of their own (on the SUT's CPUs) when `redis`."""
        grpc_port = free_port()
        sut.grpc_addr = f"127.0.0.1:{grpc_port}"
        shared: dict[str, str] = {}
        if redis:
            sut.store = RedisServer(RUN_DIR / f"redis-{sut.name}")
            sut.store.start()
            shared = {"GATEWAY_STATE_URL": sut.store.url, "GATEWAY_WORKERS": str(workers)}
        for number in range(count):
            http_port, metrics_port = free_port(), free_port()
            url = f"http://127.0.0.1:{http_port}"
            env = {
                "GATEWAY_METRICS_PORT": str(metrics_port),
                "GATEWAY_GRPC_HOST": "127.0.0.1",
                "GATEWAY_GRPC_PORT": str(grpc_port),
                "GATEWAY_HTTP_HOST": "127.0.0.1",
                "GATEWAY_HTTP_PORT": str(http_port),
                "GATEWAY_COLLECTOR_ENDPOINT": self.collector_addr,
                "GATEWAY_TENANTS_FILE": str(self.stack.tenants_file),
                **GATEWAY_ENV,
                **(REUSE_PORT_ENV if reuse_port else {}),
                **shared,
            }
            argv = [sys.executable, "-m", "gateway.cli", "serve"]
            process = self.stack.start_process(f"{sut.name}-{number}", argv, env, f"{url}/healthz")
            sut.add(process)
            # Worker i serves /metrics on GATEWAY_METRICS_PORT + i.
            urls = [f"http://127.0.0.1:{metrics_port + i}/metrics" for i in range(workers)]
            sut.metrics_urls += urls
            sut.http_url = sut.http_url or url
            self.stack.wait_ready(process, timeout=30)
            for metrics_url in urls:  # every worker, not only the first to answer
                wait_answers(process, metrics_url)

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
        store = [sut.store.process.pid] if sut.store and sut.store.process else []

        def on_phase(phase: str) -> None:
            now = time.monotonic()
            cpu = tree_cpu_seconds([*sut.pids, *store, self.collector.popen.pid])
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
        # In `used`: the SUT's processes, its store (if any), the Collector.
        on_sut = [
            c for pid, c in zip([*sut.pids, *store], used, strict=False) if runs_on(pid, sut_cpus)
        ]
        store_cpu = used.pop(len(sut.pids)) if store else None
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
            store_cpu_s=store_cpu,
        )
