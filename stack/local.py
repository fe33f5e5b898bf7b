"""The pipeline's processes on this machine: Collector, Prometheus, gateway, Alertmanager.

Used by the end-to-end tests and by `make demo`. Each component runs from the
repository's own configuration files with its ports injected; a `LocalStack`
remembers exactly the processes it started and stops only those.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
COLLECTOR_CONFIG = REPO / "otel-collector" / "config.yaml"
RECIPES_DIR = REPO / "otel-collector" / "recipes"
"""Routing recipes, each merged with COLLECTOR_CONFIG (docs/routing.md)."""
RECIPE_ENDPOINTS = (
    "COLLECTOR_TENANT_PROMETHEUS_ENDPOINT",
    "COLLECTOR_DATA_AGENTS_PROMETHEUS_ENDPOINT",
)
"""The listen addresses the recipes add (a tenant's endpoint, the data agents')."""
PROMETHEUS_CONFIG = REPO / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = REPO / "alertmanager" / "alertmanager.yml"
BUILD_COLLECTOR = REPO / "scripts" / "build-collector.sh"


class StackError(RuntimeError):
    """A component could not be found, started or made ready."""


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1, below the kernel's ephemeral
    range: a port taken from that range can be given to an outgoing connection (a
    scrape, an export) before the process meant to listen on it binds it. Never the
    same port twice in one process: a stack picks all its ports before it starts
    anything, so a port handed out earlier is still free when asked again."""
    first, _ = _ephemeral_range()
    for _ in range(100):
        port = random.randrange(10_000, first) if first > 11_000 else 0  # noqa: S311 (not a secret)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise StackError("no free TCP port found on 127.0.0.1 in 100 tries")


def default_sigint() -> None:
    """A `preexec_fn`: the child gets SIGINT as a process started from a terminal does.
    A suite run as a background job of a shell without job control (`cmd &` in a
    script) ignores SIGINT; a child inherits that, and Python then leaves it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def collector_binary() -> Path:
    """The Collector built from the manifest (built now if it is not cached)."""
    result = subprocess.run(
        [str(BUILD_COLLECTOR)], stdout=subprocess.PIPE, stderr=None, text=True, check=False
    )
    if result.returncode != 0:
        raise StackError(f"building the Collector failed ({BUILD_COLLECTOR})")
    return Path(result.stdout.strip().splitlines()[-1])


def prometheus_binary() -> Path:
    """Debian's prometheus (installed by scripts/install-system-deps.sh)."""
    found = shutil.which("prometheus")
    if found is None:
        raise StackError("prometheus is not installed: run scripts/install-system-deps.sh")
    return Path(found)


def alertmanager_binary() -> Path:
    """Debian's Alertmanager (`prometheus-alertmanager`), or an `alertmanager` on PATH."""
    for name in ("prometheus-alertmanager", "alertmanager"):
        found = shutil.which(name)
        if found is not None:
            return Path(found)
    raise StackError("prometheus-alertmanager is not installed: run scripts/install-system-deps.sh")


def collector_name(index: int) -> str:
    """Collector `index`'s name: its process here, its service in compose, and the
    `collector` label of its targets."""
    return "collector" if index == 0 else f"collector-{index}"


def collector_targets(component: str, addresses: Sequence[str]) -> list[dict[str, Any]]:
    """A target file listing the Collectors' `addresses` (in index order), each with its
    `collector` label.

    The label keeps each Collector's copy of an agent's series apart. The `collector`
    job honours the exporter's job/instance (the agent's), so without it, after a
    resize, the moved agent's frozen copy on its old Collector (kept for the
    exporter's metric_expiration) and the live one on its new Collector would be
    appended to one Prometheus series in turn: counters would jump back and forth
    (docs/scaling.md, "Sharded Collectors").
    """
    return [
        {"targets": [address], "labels": {"component": component, "collector": collector_name(i)}}
        for i, address in enumerate(addresses)
    ]


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """Status and body of a GET; status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback)
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


@dataclass
class Process:
    """One started component: its process, its log file and how to tell it is ready."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    ready_url: str
    argv: list[str] = field(default_factory=list)
    """What was started, so that it can be started again the same way (`LocalStack.restart`)."""
    env: dict[str, str] = field(default_factory=dict)
    """The variables given on top of this process's environment."""

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the component's log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class Ports:
    """Every port of one stack; 0 means pick a free one."""

    collector_otlp: int = 0
    collector_prometheus: int = 0
    collector_health: int = 0
    collector_telemetry: int = 0
    prometheus: int = 0
    gateway_grpc: int = 0
    gateway_http: int = 0
    gateway_metrics: int = 0
    alertmanager: int = 0

    def resolved(self) -> Ports:
        """A copy with every 0 replaced by a free port."""
        return Ports(**{k: v or free_port() for k, v in vars(self).items()})


@dataclass(frozen=True)
class CollectorPorts:
    """The ports of one Collector."""

    otlp: int
    prometheus: int
    health: int
    telemetry: int
    extra: Mapping[str, int] = field(default_factory=dict)
    """The ports of `LocalStack.collector_extra_endpoints`, by variable."""


@dataclass(frozen=True)
class GatewayPorts:
    """The ports of one gateway replica (its workers, if any, share grpc and http and
    serve /metrics on metrics + their index, as gateway/workers.py does)."""

    grpc: int
    http: int
    metrics: int

    @property
    def grpc_endpoint(self) -> str:
        """Where agents send OTLP/gRPC (plaintext)."""
        return f"http://127.0.0.1:{self.grpc}"

    @property
    def http_url(self) -> str:
        """The replica's HTTP server."""
        return f"http://127.0.0.1:{self.http}"


@dataclass
class LocalStack:
    """Starts and stops the pipeline's processes under one run directory.

    `collectors` Collectors take the agents' data (the gateway spreads agents over
    them); Collector 0 uses the `collector_*` ports, the others free ones.
    `collector_prometheus_ports` gives, by index, the port of a Collector's prometheus
    exporter where it matters (which Prometheus shard scrapes it; 0 or missing: as above).
    `collector_configs` are given to every Collector after config.yaml (routing recipes,
    docs/routing.md); `collector_extra_endpoints` name the variables of the listen
    addresses those files add (a tenant's own exporter), each a free port per Collector;
    `collector_env` holds the other variables they read (ROUTE_OWN_TENANTS, ...).

    `gateway_replicas` gateways may run, each on ports of its own (replica 0 on the
    `gateway_*` ports), each with `gateway_workers` processes; with
    `gateway_state_url` they share their state through that store (GATEWAY_STATE_URL).
    Prometheus scrapes the /metrics of every replica and worker.
    """

    run_dir: Path
    tenants_file: Path
    ports: Ports = field(default_factory=Ports)
    processes: list[Process] = field(default_factory=list)
    collectors: int = 1
    collector_prometheus_ports: Sequence[int] = ()
    collector_configs: Sequence[Path] = ()
    collector_extra_endpoints: Sequence[str] = ()
    collector_env: Mapping[str, str] = field(default_factory=dict)
    gateway_replicas: int = 1
    gateway_workers: int = 1
    gateway_state_url: str = ""

    def __post_init__(self) -> None:
        if self.collectors < 1:
            raise StackError(f"collectors={self.collectors}: run at least one Collector")
        if self.gateway_replicas < 1 or self.gateway_workers < 1:
            raise StackError("run at least one gateway replica of at least one worker")
        chosen = list(self.collector_prometheus_ports)
        if chosen and chosen[0]:
            self.ports = replace(self.ports, collector_prometheus=chosen[0])
        self.ports = self.ports.resolved()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        p = self.ports
        self.collector_ports = [
            CollectorPorts(
                p.collector_otlp,
                p.collector_prometheus,
                p.collector_health,
                p.collector_telemetry,
                self._extra_ports(),
            ),
            *(
                CollectorPorts(
                    free_port(),
                    (chosen[index] if index < len(chosen) else 0) or free_port(),
                    free_port(),
                    free_port(),
                    self._extra_ports(),
                )
                for index in range(1, self.collectors)
            ),
        ]
        self.gateway_ports = [
            GatewayPorts(p.gateway_grpc, p.gateway_http, p.gateway_metrics),
            *(
                GatewayPorts(free_port(), free_port(), free_port())
                for _ in range(1, self.gateway_replicas)
            ),
        ]

    def _extra_ports(self) -> dict[str, int]:
        return {name: free_port() for name in self.collector_extra_endpoints}

    # -- addresses ---------------------------------------------------------------

    @property
    def collector_endpoints(self) -> str:
        """The Collectors' OTLP/gRPC addresses, comma-separated (GATEWAY_COLLECTOR_ENDPOINT)."""
        return ",".join(f"127.0.0.1:{c.otlp}" for c in self.collector_ports)

    @property
    def gateway_grpc_endpoint(self) -> str:
        """Where agents send OTLP/gRPC (plaintext)."""
        return f"http://127.0.0.1:{self.ports.gateway_grpc}"

    @property
    def gateway_http_url(self) -> str:
        """The gateway's HTTP server."""
        return f"http://127.0.0.1:{self.ports.gateway_http}"

    @property
    def gateway_metrics_url(self) -> str:
        """The gateway's own /metrics server (GATEWAY_METRICS_PORT), which Prometheus scrapes."""
        return f"http://127.0.0.1:{self.ports.gateway_metrics}"

    @property
    def gateway_metrics_addresses(self) -> list[str]:
        """host:port of every gateway replica's and worker's /metrics."""
        return [
            f"127.0.0.1:{ports.metrics + worker}"
            for ports in self.gateway_ports
            for worker in range(self.gateway_workers)
        ]

    @property
    def prometheus_url(self) -> str:
        """Prometheus's web UI and API."""
        return f"http://127.0.0.1:{self.ports.prometheus}"

    @property
    def alertmanager_url(self) -> str:
        """Alertmanager's web UI and API."""
        return f"http://127.0.0.1:{self.ports.alertmanager}"

    # -- components --------------------------------------------------------------

    def start_collector(self, binary: Path, index: int = 0) -> Process:
        """Collector `index` (of `collectors`) with the repo's config.yaml and then
        `collector_configs`."""
        c = self.collector_ports[index]
        env = {
            "COLLECTOR_OTLP_ENDPOINT": f"127.0.0.1:{c.otlp}",
            "COLLECTOR_PROMETHEUS_ENDPOINT": f"127.0.0.1:{c.prometheus}",
            "COLLECTOR_HEALTH_ENDPOINT": f"127.0.0.1:{c.health}",
            "COLLECTOR_TELEMETRY_PORT": str(c.telemetry),
            **{name: f"127.0.0.1:{port}" for name, port in c.extra.items()},
            **self.collector_env,
        }
        configs = [COLLECTOR_CONFIG, *self.collector_configs]
        return self._start(
            collector_name(index),
            [str(binary), *(f"--config={path}" for path in configs)],
            env,
            ready_url=f"http://127.0.0.1:{c.health}/",
        )

    def start_collectors(self, binary: Path) -> list[Process]:
        """Every Collector of the stack (not waited for)."""
        return [self.start_collector(binary, index) for index in range(self.collectors)]

    def start_prometheus(
        self, binary: Path, extra_targets: Mapping[str, str | list[str]] | None = None
    ) -> Process:
        """Prometheus with the repo's prometheus.yml, linked into the run directory
        beside target files that point at this stack's ports."""
        p = self.ports
        home = self.run_dir / "prometheus"
        (home / "targets").mkdir(parents=True, exist_ok=True)
        config = home / "prometheus.yml"
        config.unlink(missing_ok=True)
        config.symlink_to(PROMETHEUS_CONFIG)
        rules = home / "rules"
        if (PROMETHEUS_CONFIG.parent / "rules").is_dir() and not rules.exists():
            rules.symlink_to(PROMETHEUS_CONFIG.parent / "rules")
        targets: dict[str, str | list[str]] = {
            "gateway": self.gateway_metrics_addresses,
            "prometheus": f"127.0.0.1:{p.prometheus}",
            # Where alerts go (the alerting section of prometheus.yml); nothing
            # listens there unless start_alertmanager runs too.
            "alertmanager": f"127.0.0.1:{p.alertmanager}",
        }
        documents: dict[str, list[dict[str, Any]]] = {
            name: [
                {
                    "targets": address if isinstance(address, list) else [address],
                    "labels": {"component": name},
                }
            ]
            for name, address in targets.items()
        }
        for job, port in (("collector", "prometheus"), ("collector-telemetry", "telemetry")):
            documents[job] = collector_targets(
                job, [f"127.0.0.1:{getattr(c, port)}" for c in self.collector_ports]
            )
        for name, address in (extra_targets or {}).items():
            addresses = address if isinstance(address, list) else [address]
            documents[name] = [{"targets": addresses, "labels": {"component": name}}]
        for name, document in documents.items():
            (home / "targets" / f"{name}.json").write_text(json.dumps(document))
        return self._start(
            "prometheus",
            [
                str(binary),
                f"--config.file={config}",
                f"--storage.tsdb.path={home / 'data'}",
                f"--web.listen-address=127.0.0.1:{p.prometheus}",
                "--web.enable-lifecycle",
            ],
            {},
            ready_url=f"{self.prometheus_url}/-/ready",
        )

    def start_store(self, binary: Path, name: str, scrape: str) -> tuple[Process, str]:
        """Another Prometheus (a store a recipe routes to) on a free port, and its URL.

        It runs the repo's prometheus.yml; its `collector` job scrapes the endpoint
        `scrape` (one of `collector_extra_endpoints`) of every Collector, its other jobs
        have no targets, and it has no rules.
        """
        port = free_port()
        home = self.run_dir / name
        (home / "targets").mkdir(parents=True, exist_ok=True)
        config = home / "prometheus.yml"
        config.unlink(missing_ok=True)
        config.symlink_to(PROMETHEUS_CONFIG)
        addresses = [f"127.0.0.1:{c.extra[scrape]}" for c in self.collector_ports]
        for job in ("collector", "collector-telemetry", "gateway", "prometheus", "alertmanager"):
            document = collector_targets(job, addresses) if job == "collector" else []
            (home / "targets" / f"{job}.json").write_text(json.dumps(document))
        url = f"http://127.0.0.1:{port}"
        argv = [
            str(binary),
            f"--config.file={config}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        return self._start(name, argv, {}, ready_url=f"{url}/-/ready"), url

    def start_alertmanager(self, binary: Path) -> Process:
        """Alertmanager with the repo's alertmanager.yml, alone (no cluster port)."""
        home = self.run_dir / "alertmanager"
        home.mkdir(parents=True, exist_ok=True)
        return self._start(
            "alertmanager",
            [
                str(binary),
                f"--config.file={ALERTMANAGER_CONFIG}",
                f"--storage.path={home / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.ports.alertmanager}",
                # An empty address turns off the HA gossip, which would otherwise
                # bind 9094 on every interface.
                "--cluster.listen-address=",
            ],
            {},
            ready_url=f"{self.alertmanager_url}/-/ready",
        )

    def start_gateway(
        self, extra_env: Mapping[str, str] | None = None, replica: int = 0
    ) -> Process:
        """Gateway replica `replica` (`python -m gateway.cli serve`) with its ports, its
        workers and the state store of this stack."""
        ports = self.gateway_ports[replica]
        name = "gateway" if replica == 0 else f"gateway-{replica}"
        store = {"GATEWAY_STATE_URL": self.gateway_state_url} if self.gateway_state_url else {}
        env = {
            "GATEWAY_GRPC_HOST": "127.0.0.1",
            "GATEWAY_GRPC_PORT": str(ports.grpc),
            "GATEWAY_HTTP_HOST": "127.0.0.1",
            "GATEWAY_HTTP_PORT": str(ports.http),
            # /metrics on a port of its own, as deployed (docs/deploy.md).
            "GATEWAY_METRICS_HOST": "127.0.0.1",
            "GATEWAY_METRICS_PORT": str(ports.metrics),
            "GATEWAY_COLLECTOR_ENDPOINT": self.collector_endpoints,
            "GATEWAY_TENANTS_FILE": str(self.tenants_file),
            # Its own fleet table: stacks may share a tenants file, beside which
            # the gateway would keep one otherwise.
            "GATEWAY_FLEET_STATE_FILE": str(self.run_dir / f"{name}-fleet-state.json"),
            # Set either way: a GATEWAY_WORKERS of the caller's shell must not
            # start more workers than Prometheus scrapes.
            "GATEWAY_WORKERS": str(self.gateway_workers),
            **store,
            **(extra_env or {}),
        }
        return self._start(
            name,
            [sys.executable, "-m", "gateway.cli", "serve"],
            env,
            ready_url=f"{ports.http_url}/healthz",
        )

    def start_process(
        self, name: str, argv: list[str], env: Mapping[str, str], ready_url: str = ""
    ) -> Process:
        """Any other process (a demo agent) that the stack should stop with the rest."""
        return self._start(name, argv, env, ready_url)

    def restart(self, process: Process) -> None:
        """Start `process` again in place: same argv, environment, ports and log (appended).

        `process.popen` becomes the new process; whatever is left of the old one's
        process group is killed first, so nothing it spawned still holds a port.
        """
        _signal_group(process.popen.pid, signal.SIGKILL)
        if process.popen.poll() is None:
            process.popen.wait()
        process.popen = _spawn(process.argv, process.env, process.log)
        if process not in self.processes:
            self.processes.append(process)

    def _start(self, name: str, argv: list[str], env: Mapping[str, str], ready_url: str) -> Process:
        log = self.run_dir / f"{name}.log"
        process = Process(name, _spawn(argv, env, log), log, ready_url, list(argv), dict(env))
        self.processes.append(process)
        return process

    # -- readiness and teardown ----------------------------------------------------

    def wait_ready(self, process: Process, timeout: float = 60.0) -> float:
        """Seconds until `process` answered 200 on its ready URL; StackError otherwise."""
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if process.popen.poll() is not None:
                raise StackError(
                    f"{process.name} exited with {process.popen.returncode} before it was "
                    f"ready; its log ({process.log}):\n{process.log_tail()}"
                )
            status, _ = http_get(process.ready_url, timeout=1.0)
            if status == 200:
                return time.monotonic() - started
            time.sleep(0.1)
        raise StackError(
            f"{process.name} not ready at {process.ready_url} after {timeout:.0f} s; "
            f"its log ({process.log}):\n{process.log_tail()}"
        )

    def stop(self, process: Process, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; the whole process group."""
        if process.popen.poll() is None:
            _signal_group(process.popen.pid, signal.SIGTERM)
            try:
                process.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(process.popen.pid, signal.SIGKILL)
                process.popen.wait()
        if process in self.processes:
            self.processes.remove(process)

    def stop_all(self) -> None:
        """Stop every process this stack started, newest first."""
        for process in reversed(list(self.processes)):
            self.stop(process)

    # -- Prometheus ------------------------------------------------------------------

    def query(
        self, promql: str, at: float | None = None, prometheus_url: str = ""
    ) -> list[dict[str, Any]]:
        """The result of an instant query (a vector, or a matrix for a range selector),
        evaluated now or at the Unix time `at`, on this stack's Prometheus or the one
        at `prometheus_url` (a store)."""
        params = {"query": promql} if at is None else {"query": promql, "time": f"{at:.3f}"}
        base = prometheus_url or self.prometheus_url
        url = f"{base}/api/v1/query?" + urllib.parse.urlencode(params)
        status, body = http_get(url, timeout=5.0)
        if status != 200:
            raise StackError(f"Prometheus answered {status} to {promql!r}: {body[:300]!r}")
        result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
        return result

    def query_range(
        self, promql: str, start: float, end: float, step: float = 1.0
    ) -> list[dict[str, Any]]:
        """The result matrix of a range query between two Unix times."""
        params = {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": step}
        url = f"{self.prometheus_url}/api/v1/query_range?" + urllib.parse.urlencode(params)
        status, body = http_get(url, timeout=5.0)
        if status != 200:
            raise StackError(f"Prometheus answered {status} to {promql!r}: {body[:300]!r}")
        result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
        return result

    def wait_for(
        self,
        promql: str,
        predicate: Callable[[list[dict[str, Any]]], bool],
        timeout: float = 60.0,
    ) -> list[dict[str, Any]]:
        """Poll `promql` until `predicate` holds on its result; StackError at the deadline."""
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(promql)
            if predicate(result):
                return result
            time.sleep(0.5)
        raise StackError(f"after {timeout:.0f} s, {promql!r} still returns {result}")


def _spawn(argv: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env},
            cwd=REPO,
            # Its own process group: Ctrl-C in a terminal reaches the demo
            # only, which then stops each component in order.
            start_new_session=True,
        )


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
