"""`make thanos-demo`: the pipeline past one Prometheus on this machine, with demo connectors.

Starts the topology of stack/thanos_stack.py from the repository's files, on free
ports: lanes of a gateway and its Collector, two Prometheus shards
(prometheus/shard-K-of-2.yml), Thanos Receive, Query and Ruler, and Alertmanager.
Then a demo connector per tenant, acme's on lane 0 and globex's on lane 1, so that
each shard holds one tenant's connector and Thanos Query shows both. Prints every
address; runs until Ctrl-C, then stops every process it started.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
from collections.abc import Sequence

from otel_agents import names
from scripts.demo import make_tenants, wait_for_port
from stack.local import REPO, StackError, free_port
from stack.shards import hashmod, shard_counts
from stack.thanos_stack import ThanosStack, thanos_stack

RUN_DIR = REPO / ".run" / "thanos"


def say(message: str) -> None:
    """One line of progress."""
    print(f"[thanos-demo] {message}", flush=True)


def describe(stack: ThanosStack) -> None:
    """Print where each component listens and which shard scrapes which Collector."""
    for index, lane in enumerate(stack.lanes):
        collector = f"127.0.0.1:{lane.ports.collector_prometheus}"
        say(
            f"lane {index}: gateway OTLP/gRPC {lane.gateway_grpc_endpoint}, HTTP "
            f"{lane.gateway_http_url}; its Collector (http://{collector}/metrics) is "
            f"scraped by shard {hashmod(collector, len(stack.shards))}"
        )
    for shard in stack.shards:
        count = len(stack.shards)
        say(f"shard {shard.index}: {shard.url} (prometheus/shard-{shard.index}-of-{count}.yml)")
    say(f"Thanos Receive: remote write {stack.receive.remote_write_url}")
    say(f"Thanos Query, the global view (Prometheus API and UI): {stack.query.url}")
    say(f"Thanos Ruler (rules/pipeline.yml, rules/dashboards.yml): {stack.ruler.url}/alerts")
    say(f"Alertmanager: {stack.alertmanager_url}")


def start_connectors(stack: ThanosStack, keys: dict[str, str]) -> None:
    """The demo upstream, then one demo connector per tenant, tenant i on lane i mod N."""
    port = free_port()
    upstream = f"127.0.0.1:{port}"
    stack.core.start_process(
        "upstream",
        [sys.executable, "-m", "scripts.demo_upstream"],
        {"DEMO_UPSTREAM_ADDRESS": upstream},
    )
    wait_for_port(port)
    for index, (tenant, key) in enumerate(keys.items()):
        lane = stack.lanes[index % len(stack.lanes)]
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": lane.gateway_grpc_endpoint,
            "OTEL_AGENTS_API_KEY": key,
            "OTEL_METRIC_EXPORT_INTERVAL": "5000",
            "OTEL_SERVICE_NAME": f"demo-connector-{tenant}",
            "DEMO_UPSTREAM_ADDRESS": upstream,
        }
        process = stack.core.start_process(
            f"connector-{tenant}", [sys.executable, "-m", "scripts.demo_connector"], env
        )
        say(f"demo connector of {tenant!r} sends to {lane.run_dir.name} (log: {process.log})")


def wait_for_tenants(stack: ThanosStack, tenants: Sequence[str], timeout: float = 120) -> None:
    """Report when Thanos Query shows every tenant's bytes sent."""
    promql = f"sum by (tenant_id) ({names.CONNECTOR_BYTES_SENT.prometheus})"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = stack.query.query(promql)
        if {s["metric"].get("tenant_id") for s in result} >= set(tenants):
            values = ", ".join(f"{s['metric']['tenant_id']}={s['value'][1]}" for s in result)
            say(f"Thanos Query shows {promql}: {values}")
            return
        time.sleep(1.0)
    raise StackError(f"after {timeout:.0f} s Thanos Query still lacks a tenant in {promql}")


def _interrupt(signum: int, frame: object) -> None:
    # A second Ctrl-C must not cut the teardown short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def run(argv: Sequence[str] | None = None) -> int:
    """Start everything, wait for Ctrl-C or a failure, stop everything."""
    parser = argparse.ArgumentParser(prog="python -m scripts.thanos_demo", description=__doc__)
    parser.add_argument("--lanes", type=int, default=2, help="gateway+Collector pairs (2)")
    parser.add_argument("--shards", type=int, default=2, choices=shard_counts())
    parser.add_argument("--no-agents", action="store_true", help="start no demo connectors")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)

    shutil.rmtree(RUN_DIR, ignore_errors=True)
    RUN_DIR.mkdir(parents=True)
    keys = make_tenants(RUN_DIR / "tenants.json")
    keys_file = RUN_DIR / "keys.txt"
    keys_file.write_text("".join(f"{tenant} {key}\n" for tenant, key in keys.items()))
    keys_file.chmod(0o600)
    try:
        with thanos_stack(
            RUN_DIR, RUN_DIR / "tenants.json", lanes=args.lanes, shards=args.shards, report=say
        ) as stack:
            describe(stack)
            say(f"tenant keys (acme, globex) are in {keys_file}")
            if not args.no_agents:
                start_connectors(stack, keys)
                wait_for_tenants(stack, list(keys))
                bytes_sent = names.CONNECTOR_BYTES_SENT.prometheus
                say(f"try: {stack.query.url}/graph?g0.expr=rate({bytes_sent}[1m])")
            say(f"logs in {RUN_DIR}; press Ctrl-C to stop")
            while True:
                time.sleep(3600.0)
    except KeyboardInterrupt:
        say("stopped every process the demo started")
        return 0
    except StackError as exc:
        say(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(run())
