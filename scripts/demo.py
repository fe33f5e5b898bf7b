"""`make demo`: the whole pipeline on this machine with demo agents for two tenants.

Starts the Collector, the gateway and Prometheus from the repo's configuration,
then one demo connector per tenant; prints each component's address as it
becomes ready; restarts a component that dies (stack/supervisor.py, like
compose's `restart: unless-stopped`); runs until Ctrl-C, then stops every process
it started.

    python -m scripts.demo [--collectors N] [--gateway-workers N] [--recipe NAME]

`--collectors N` (`make demo COLLECTORS=N`) runs N Collectors, the gateway spreading
the agents over them (docs/scaling.md, "Sharded Collectors"); 1 by default.
`--gateway-workers N` (`make demo GATEWAY_WORKERS=N`) runs the gateway as N worker
processes sharing its ports and, for their shared state (GATEWAY_STATE_URL), Debian's
redis-server on a free port (docs/scaling.md, "Gateway replicas"); 1 by default: one
process, no Redis.
`--recipe NAME` (or COLLECTOR_RECIPE=NAME, as in compose) runs every Collector with
the routing recipe otel-collector/recipes/NAME.yaml after config.yaml (docs/routing.md);
the endpoints it adds get free ports, printed with each Collector, and a Prometheus of
their own that scrapes them on every Collector.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

from gateway import tenants
from otel_agents import names
from stack.local import (
    RECIPE_ENDPOINTS,
    RECIPES_DIR,
    REPO,
    LocalStack,
    Ports,
    Process,
    StackError,
    alertmanager_binary,
    collector_binary,
    collector_name,
    prometheus_binary,
)
from stack.prefect_server import client_env, start_prefect_server
from stack.redis_server import RedisServer
from stack.supervisor import Supervisor

RUN_DIR = REPO / ".run" / "demo"
DEMO_TENANTS = ("acme", "globex")
UPSTREAM_PORT = 50051  # the demo connectors' upstream (scripts/demo_upstream.py)
PREFECT_PORT = 4200  # Prefect's usual port: its UI is where users expect it
PORTS = Ports(
    collector_otlp=14317,
    collector_prometheus=8889,
    collector_health=13133,
    collector_telemetry=8888,
    prometheus=9090,
    gateway_grpc=4317,
    gateway_http=4318,
    gateway_metrics=9464,
    alertmanager=9093,
)


def say(message: str) -> None:
    """One line of progress."""
    print(f"[demo] {message}", flush=True)


def check_ports_free(ports: dict[str, int]) -> None:
    """Fail early, naming the port, when something else already listens."""
    for name, port in ports.items():
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                raise StackError(
                    f"port {port} ({name}) is in use: stop what listens there "
                    f"(`ss -ltnp 'sport = :{port}'` shows it) and run `make demo` again"
                ) from None


def make_tenants(path: Path) -> dict[str, str]:
    """A fresh tenants file for the demo tenants; returns their keys."""
    table = tenants.TenantTable()
    keys = {}
    for name in DEMO_TENANTS:
        table, keys[name] = tenants.add_key(table, name)
    tenants.save(path, table)
    return keys


def _agent_env(stack: LocalStack, key: str, service: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": stack.gateway_grpc_endpoint,
        "OTEL_AGENTS_API_KEY": key,
        "OTEL_METRIC_EXPORT_INTERVAL": "5000",
        "OTEL_SERVICE_NAME": service,
    }


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    """Until something accepts connections on 127.0.0.1:`port`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise StackError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def start_connectors(
    stack: LocalStack, keys: dict[str, str], supervisor: Supervisor | None = None
) -> list[Process]:
    """The demo upstream, then one demo connector per tenant streaming Arrow batches to it."""
    upstream_address = f"127.0.0.1:{UPSTREAM_PORT}"
    upstream = stack.start_process(
        "upstream",
        [sys.executable, "-m", "scripts.demo_upstream"],
        {"DEMO_UPSTREAM_ADDRESS": upstream_address},
    )
    wait_for_port(UPSTREAM_PORT)
    say(f"demo upstream (Arrow batches over gRPC) listening on {upstream_address}")
    _watch(supervisor, upstream)
    connectors = [upstream]
    for tenant, key in keys.items():
        env = {
            **_agent_env(stack, key, f"demo-connector-{tenant}"),
            "DEMO_UPSTREAM_ADDRESS": upstream_address,
        }
        connectors.append(
            stack.start_process(
                f"connector-{tenant}", [sys.executable, "-m", "scripts.demo_connector"], env
            )
        )
        say(f"demo connector for tenant {tenant!r} started (log: {connectors[-1].log})")
        _watch(supervisor, connectors[-1])
    return connectors


def start_data_agents(
    stack: LocalStack, keys: dict[str, str], supervisor: Supervisor | None = None
) -> list[Process]:
    """A Prefect server, then one demo data agent per tenant running flows against it."""
    server = start_prefect_server(stack, PREFECT_PORT)
    seconds = stack.wait_ready(server, timeout=120)
    say(f"Prefect server ready in {seconds:.1f} s: http://127.0.0.1:{PREFECT_PORT}")
    _watch(supervisor, server)
    agents = [server]
    for tenant, key in keys.items():
        env = {
            **_agent_env(stack, key, f"demo-data-agent-{tenant}"),
            **client_env(server, str(stack.run_dir / f"prefect-agent-{tenant}")),
        }
        agents.append(
            stack.start_process(
                f"data-agent-{tenant}", [sys.executable, "-m", "scripts.demo_data_agent"], env
            )
        )
        say(f"demo data agent for tenant {tenant!r} started (log: {agents[-1].log})")
        _watch(supervisor, agents[-1])
    return agents


def _watch(supervisor: Supervisor | None, process: Process) -> None:
    if supervisor is not None:
        supervisor.watch(process)


def wait_for_tenants(
    stack: LocalStack, metric: str, started: float, stores: dict[str, str] | None = None
) -> None:
    """Report when Prometheus, or one of the recipe's `stores` (name: URL), shows
    `metric` for every demo tenant."""
    places = {"Prometheus": "", **(stores or {})}
    deadline = time.monotonic() + 120
    while True:
        found = {
            name: {s["metric"].get("tenant_id", ""): s["value"][1] for s in result}
            for name, url in places.items()
            if (result := stack.query(f"sum by (tenant_id) ({metric})", prometheus_url=url))
        }
        if {tenant for values in found.values() for tenant in values} >= set(DEMO_TENANTS):
            break
        if time.monotonic() > deadline:
            raise StackError(f"after 120 s, {metric} shows only {found}")
        time.sleep(0.5)
    for name, values in found.items():
        shown = ", ".join(f"{tenant}={value}" for tenant, value in values.items())
        say(f"{name} shows {metric} for {shown} ({time.monotonic() - started:.0f} s after start)")


def start_stores(stack: LocalStack, recipe: str, supervisor: Supervisor) -> dict[str, str]:
    """A Prometheus for each endpoint the recipe adds, scraping it on every Collector;
    their URLs by name."""
    stores = {}
    for variable in stack.collector_extra_endpoints:
        kind = variable.removeprefix("COLLECTOR_").removesuffix("_PROMETHEUS_ENDPOINT")
        name = f"prometheus-{kind.lower().replace('_', '-')}"
        process, url = stack.start_store(prometheus_binary(), name, variable)
        seconds = stack.wait_ready(process)
        supervisor.watch(process)
        say(f"{name} ready in {seconds:.1f} s: {url} (the {variable} of recipe {recipe})")
        stores[name] = url
    return stores


def recipe_endpoints(recipe: str) -> tuple[str, ...]:
    """The endpoints of RECIPE_ENDPOINTS that the recipe `recipe` adds."""
    text = (RECIPES_DIR / f"{recipe}.yaml").read_text(encoding="utf-8") if recipe else ""
    return tuple(name for name in RECIPE_ENDPOINTS if f"${{env:{name}" in text)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def start_collectors(stack: LocalStack, supervisor: Supervisor) -> None:
    """Every Collector of the stack, each watched once it is ready."""
    binary = collector_binary()
    for index, process in enumerate(stack.start_collectors(binary)):
        seconds = stack.wait_ready(process)
        supervisor.watch(process)
        ports = stack.collector_ports[index]
        which = "Collector" if stack.collectors == 1 else collector_name(index)
        say(
            f"{which} ready in {seconds:.1f} s: OTLP/gRPC 127.0.0.1:{ports.otlp}, "
            f"metrics http://127.0.0.1:{ports.prometheus}/metrics"
            + "".join(f", {name}=127.0.0.1:{port}" for name, port in ports.extra.items())
        )


def start_redis(stack: LocalStack, supervisor: Supervisor) -> str:
    """Debian's redis-server for the gateway workers' shared state, watched; its URL.

    On a free port: a Redis the machine already runs (Debian's package starts one on
    6379) must not be shared with, nor block, the demo.
    """
    redis = RedisServer(stack.run_dir)
    try:
        process = stack.start_process("redis", redis.command(), {})
        started = time.monotonic()
        redis.wait_answers(process=process.popen)
    except RuntimeError as exc:
        raise StackError(str(exc)) from exc
    supervisor.watch(process)
    say(
        f"Redis ready in {time.monotonic() - started:.1f} s: {redis.url} "
        "(the gateway workers' shared state, GATEWAY_STATE_URL; nothing kept on disk)"
    )
    return redis.url


def start_gateway(stack: LocalStack, supervisor: Supervisor, admin_key: str) -> None:
    """The gateway (its workers, if several), watched once ready."""
    gateway = stack.start_gateway(
        {"GATEWAY_ADMIN_KEY_SHA256": hashlib.sha256(admin_key.encode()).hexdigest()}
    )
    seconds = stack.wait_ready(gateway)
    supervisor.watch(gateway)
    say(
        f"gateway ready in {seconds:.1f} s: OTLP/gRPC {stack.gateway_grpc_endpoint}, "
        f"{stack.gateway_http_url}/readyz, {stack.gateway_metrics_url}/metrics"
    )
    if stack.gateway_workers > 1:
        metrics = ", ".join(stack.gateway_metrics_addresses)
        say(
            f"{stack.gateway_workers} gateway workers share these ports (the kernel spreads "
            f"the agents' connections) and the state in {stack.gateway_state_url}; each "
            f"serves its own /metrics: {metrics}"
        )


def run(collectors: int = 1, recipe: str = "", gateway_workers: int = 1) -> int:
    """Start everything with `collectors` Collectors (each with `recipe`, if any) and
    `gateway_workers` gateway workers, wait for Ctrl-C or a failure, stop everything."""
    started = time.monotonic()
    # Ctrl-C and SIGTERM raise KeyboardInterrupt wherever the demo is, then the
    # `finally` below stops every process. Set explicitly: a shell starts
    # background jobs with SIGINT ignored, and Python would keep ignoring it.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)

    worker_metrics = {
        f"gateway worker {index} metrics": PORTS.gateway_metrics + index
        for index in range(1, gateway_workers)
    }
    check_ports_free(
        {
            **vars(PORTS),
            **worker_metrics,
            "prefect": PREFECT_PORT,
            "demo upstream": UPSTREAM_PORT,
        }
    )
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    RUN_DIR.mkdir(parents=True)
    keys = make_tenants(RUN_DIR / "tenants.json")
    # An admin key: the status page for every tenant, `otel-gateway agents list|forget`.
    admin_key = secrets.token_urlsafe(24)
    keys_file = RUN_DIR / "keys.txt"
    keys_file.write_text(
        "".join(f"{tenant} {key}\n" for tenant, key in keys.items()) + f"admin {admin_key}\n"
    )
    keys_file.chmod(0o600)
    stack = LocalStack(
        RUN_DIR,
        tenants_file=RUN_DIR / "tenants.json",
        ports=PORTS,
        collectors=collectors,
        collector_configs=[RECIPES_DIR / f"{recipe}.yaml"] if recipe else [],
        collector_extra_endpoints=recipe_endpoints(recipe),
        gateway_workers=gateway_workers,
    )
    # Each component is watched once it is ready: one that dies later is
    # restarted (said here, and marked in its log) while the demo runs on.
    supervisor = Supervisor(stack, report=say).start()
    try:
        start_collectors(stack, supervisor)
        if gateway_workers > 1:
            stack.gateway_state_url = start_redis(stack, supervisor)
        start_gateway(stack, supervisor, admin_key)
        if collectors > 1:
            say(f"the gateway spreads the agents over {collectors} Collectors by their id")
        prometheus = stack.start_prometheus(prometheus_binary())
        seconds = stack.wait_ready(prometheus)
        supervisor.watch(prometheus)
        say(f"Prometheus ready in {seconds:.1f} s: {stack.prometheus_url}")
        alertmanager = stack.start_alertmanager(alertmanager_binary())
        seconds = stack.wait_ready(alertmanager)
        supervisor.watch(alertmanager)
        say(f"Alertmanager ready in {seconds:.1f} s: {stack.alertmanager_url}")
        stores = start_stores(stack, recipe, supervisor)
        start_connectors(stack, keys, supervisor)
        wait_for_tenants(stack, names.CONNECTOR_BYTES_SENT.prometheus, started, stores)
        start_data_agents(stack, keys, supervisor)
        wait_for_tenants(stack, names.AGENT_FLOWS_EXECUTED.prometheus, started, stores)
        bytes_sent = names.CONNECTOR_BYTES_SENT.prometheus
        say(f"try: {stack.prometheus_url}/graph?g0.expr=rate({bytes_sent}[1m])")
        say(
            f"fleet status page: {stack.gateway_http_url}/status (tenant keys and an admin key "
            f"are in {keys_file}); with OTEL_GATEWAY_ADMIN_KEY set to the admin key, "
            f"`otel-gateway agents list --url {stack.gateway_http_url}` lists every agent"
        )
        say(f"alerts: {stack.prometheus_url}/alerts, Alertmanager {stack.alertmanager_url}")
        say(f"logs in {RUN_DIR}; a component that dies is restarted; press Ctrl-C to stop")
        while True:
            time.sleep(3600.0)  # the supervisor's thread does the watching
    except KeyboardInterrupt:
        return 0
    except StackError as exc:
        say(f"error: {exc}")
        return 1
    finally:
        # A second Ctrl-C must not cut the teardown short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        say("stopping")
        # First, so that nothing being stopped is started again.
        supervisor.close()
        stack.stop_all()
        say("stopped every process the demo started")


def main(argv: list[str]) -> int:
    """Parse the command line and run the demo."""
    parser = argparse.ArgumentParser(
        prog="python -m scripts.demo", description="The whole pipeline with demo agents."
    )
    parser.add_argument(
        "--collectors",
        type=int,
        default=1,
        metavar="N",
        help="Collectors to spread the agents over (default 1)",
    )
    parser.add_argument(
        "--gateway-workers",
        type=int,
        default=1,
        metavar="N",
        help="gateway processes sharing its ports and, through a Redis the demo starts, "
        "its state (default 1: one process, no Redis)",
    )
    parser.add_argument(
        "--recipe",
        default=os.environ.get("COLLECTOR_RECIPE", ""),
        metavar="NAME",
        help="routing recipe of otel-collector/recipes/ for every Collector (docs/routing.md)",
    )
    args = parser.parse_args(argv)
    if args.collectors < 1:
        parser.error(f"--collectors {args.collectors}: run at least one Collector")
    if args.recipe and not (RECIPES_DIR / f"{args.recipe}.yaml").is_file():
        known = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
        parser.error(f"--recipe {args.recipe}: no such recipe; one of {known}")
    if not 1 <= args.gateway_workers <= 64:
        parser.error(f"--gateway-workers {args.gateway_workers}: between 1 and 64")
    return run(args.collectors, args.recipe, args.gateway_workers)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except StackError as exc:
        say(f"error: {exc}")
        sys.exit(1)
