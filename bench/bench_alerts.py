"""Alert latency: a connector killed with SIGKILL → ConnectorSilent firing, in
Alertmanager, and notified.

Run: `.venv/bin/python -m bench.bench_alerts` (about 5 minutes; `--quick`: about
1 minute, a smoke run with a 15 s threshold and 2 s exports, not the defaults). The
real stack runs as processes on free ports from the repository's files, with their
defaults: Collector, gateway (default fleet settings), Prometheus (scrape and rule
evaluation every 10 s, prometheus/rules/ with the 120 s silence threshold),
Alertmanager (alertmanager/alertmanager.yml: critical alerts grouped by alertname and
tenant_id, group_wait 10 s, group_interval 1 m).

`--agents` connectors (default 12) run as processes of their own, set up with the
library as a connector would be (`setup_metrics` + `connector_metrics`, counting a
batch every 0.5 s) and exporting at the library's default interval (30 s); each has
its own service.name (ConnectorSilent is per tenant and service) and
service.instance.id, and they are spread over `--tenants` tenants (default 3), so
that some alerts open an Alertmanager group and others join one. They start spread
over one rule-evaluation interval: an agent's exports keep a fixed offset to the
evaluations, which sets how long after the threshold its alert fires, and a fleet's
offsets cover the interval. Once Prometheus's rules know every agent, they are
SIGKILLed in random order, one in each slice of an export interval (at a random
moment inside it), so that the kills fall at every phase of the agents' export
cycles and the trials run concurrently.

For each trial, polled every 0.5 s from the kill: ConnectorSilent for its tenant and
service `firing` in Prometheus (/api/v1/alerts; also its `activeAt`, the rule
evaluation that fired it), the alert in Alertmanager (/api/v2/alerts), and, when
the port of alertmanager.yml's webhook receivers is free, the notification
Alertmanager POSTs there. Also "last export → firing" (to `activeAt`): from the
gateway's last-seen timestamp of the agent, its last accepted export, which the
threshold counts from.
Prints every trial, p50 and max, and writes bench/results/bench_alerts.json; asserts
nothing. Target: every trial within 3 minutes.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import random
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from bench.bench_freshness import prometheus_global, seconds_of, spread
from gateway import tenants
from otel_agents import AgentConfig, connector_metrics, setup_metrics
from scripts.localstack import (
    ALERTMANAGER_CONFIG,
    PROMETHEUS_CONFIG,
    LocalStack,
    Process,
    StackError,
    alertmanager_binary,
    collector_binary,
    http_get,
    prometheus_binary,
)

RESULTS = Path(__file__).resolve().parent / "results" / "bench_alerts.json"
ALERT = "ConnectorSilent"
TARGET_S = 180.0
POLL_S = 0.5
QUICK_THRESHOLD_S = 15
QUICK_EXPORT_MS = 2000
THRESHOLD_RULE = "expr: vector(120)"  # pipeline:agent_silence_threshold_seconds


@dataclass
class Trial:
    """One killed agent and when each stage was first seen (seconds after the kill)."""

    service: str
    tenant: str
    killed_wall: float = 0.0
    killed_at: float = 0.0  # time.monotonic()
    last_export_wall: float = 0.0
    firing_s: float | None = None
    active_at_s: float | None = None
    alertmanager_s: float | None = None
    notified_s: float | None = None

    @property
    def since_last_export_at_kill(self) -> float:
        """How long before the kill its last export was accepted by the gateway."""
        return self.killed_wall - self.last_export_wall

    def done(self, notifications: bool) -> bool:
        """Every stage seen."""
        return (
            self.firing_s is not None
            and self.alertmanager_s is not None
            and (self.notified_s is not None or not notifications)
        )


# -- the agents ---------------------------------------------------------------------------


def run_agent() -> None:
    """An agent process: a connector that counts a batch every 0.5 s until killed."""
    service = os.environ["OTEL_SERVICE_NAME"]
    telemetry = setup_metrics(service, "connector", service_version="bench")
    metrics = connector_metrics(telemetry, version="bench")
    metrics.set_connected(True)
    while True:
        metrics.record_batch(random.randint(100, 5000), random.randint(4_000, 400_000))
        time.sleep(0.5)


def start_agents(
    stack: LocalStack,
    keys: dict[str, str],
    count: int,
    run_id: str,
    export_ms: int | None,
    spread_s: float,
) -> tuple[dict[str, Process], list[Trial]]:
    """`count` agent processes, tenants taken in turn, keyed by service name; one
    started in each slice of `spread_s` seconds, at a random moment inside it."""
    processes, trials = {}, []
    names = sorted(keys)
    begin = time.monotonic()
    for number in range(count):
        time.sleep(
            max(0.0, begin + (number + random.random()) * spread_s / count - time.monotonic())
        )
        tenant = names[number % len(names)]
        service = f"bench-alerts-{number:02d}-{run_id}"
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": stack.gateway_grpc_endpoint,
            "OTEL_AGENTS_API_KEY": keys[tenant],
            "OTEL_SERVICE_NAME": service,
        }
        if export_ms is not None:
            env["OTEL_METRIC_EXPORT_INTERVAL"] = str(export_ms)
        argv = [sys.executable, "-m", "bench.bench_alerts", "--agent"]
        processes[service] = stack.start_process(f"agent-{number:02d}", argv, env)
        trials.append(Trial(service, tenant))
    return processes, trials


# -- the stack ----------------------------------------------------------------------------


def start_stack(
    run_dir: Path, tenant_names: list[str], threshold_s: int | None
) -> tuple[LocalStack, dict[str, str]]:
    """Collector, gateway, Prometheus, Alertmanager, and a key per tenant; `threshold_s`
    replaces the silence threshold in a copy of the rules (quick runs only)."""
    table = tenants.TenantTable()
    keys = {}
    for name in tenant_names:
        table, keys[name] = tenants.add_key(table, name)
    tenants.save(run_dir / "tenants.json", table)
    if threshold_s is not None:
        # start_prometheus links the repository's rules only where no rules/ exists yet.
        rules = run_dir / "prometheus" / "rules"
        rules.mkdir(parents=True)
        for path in (PROMETHEUS_CONFIG.parent / "rules").glob("*.yml"):
            text = path.read_text()
            if path.name == "agents.yml":
                if text.count(THRESHOLD_RULE) != 1:
                    raise StackError(f"{path} no longer has one {THRESHOLD_RULE!r}")
                text = text.replace(THRESHOLD_RULE, f"expr: vector({threshold_s})")
            (rules / path.name).write_text(text)
    stack = LocalStack(run_dir, tenants_file=run_dir / "tenants.json")
    try:
        stack.wait_ready(stack.start_collector(collector_binary()))
        stack.wait_ready(stack.start_gateway())
        stack.wait_ready(stack.start_prometheus(prometheus_binary()))
        stack.wait_ready(stack.start_alertmanager(alertmanager_binary()))
    except BaseException:
        stack.stop_all()
        raise
    return stack, keys


def get_json(url: str) -> Any:
    """The decoded JSON of a 200 answer."""
    status, body = http_get(url, timeout=5)
    if status != 200:
        raise StackError(f"{url} answered {status}: {body[:300]!r}")
    return json.loads(body)


# -- notifications --------------------------------------------------------------------------


class Notifications:
    """Alertmanager's webhook notifications, on the address alertmanager.yml names."""

    def __init__(self, prefix: str) -> None:
        """Listen if the port is free; `received` maps service → time.monotonic()."""
        self.prefix = prefix
        self.received: dict[str, float] = {}
        self.server: http.server.ThreadingHTTPServer | None = None
        config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
        urls = [
            urllib.parse.urlsplit(hook["url"])
            for receiver in config["receivers"]
            for hook in receiver.get("webhook_configs", [])
        ]
        addresses = {(url.hostname or "", url.port or 80) for url in urls}
        self.address = ", ".join(f"{host}:{port}" for host, port in sorted(addresses))
        if len(addresses) != 1:
            self.problem = f"the webhooks are not on one address ({self.address})"
            return
        try:
            self.server = http.server.ThreadingHTTPServer(addresses.pop(), self._handler())
        except OSError as exc:
            self.problem = f"{self.address} is in use ({exc.strerror})"
            return
        self.problem = ""
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                now = time.monotonic()
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(200)
                self.end_headers()
                try:
                    alerts = json.loads(body).get("alerts", [])
                except ValueError:
                    return
                for alert in alerts:
                    labels = alert.get("labels", {})
                    service = labels.get("service", "")
                    if (
                        alert.get("status") == "firing"
                        and labels.get("alertname") == ALERT
                        and service.startswith(owner.prefix)
                    ):
                        owner.received.setdefault(service, now)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        return Handler

    def close(self) -> None:
        """Stop listening."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


# -- the measurement ------------------------------------------------------------------------


def wait_known(stack: LocalStack, services: set[str], run_id: str, timeout: float) -> float:
    """Until Prometheus's rules know every agent (the gateway has seen each); seconds."""
    started = time.monotonic()
    promql = f'tenant_service:connector_last_seen_age_seconds{{service=~".*-{run_id}"}}'
    stack.wait_for(
        promql, lambda result: {r["metric"]["service"] for r in result} >= services, timeout
    )
    return time.monotonic() - started


def observe(
    stack: LocalStack,
    trials: list[Trial],
    processes: dict[str, Process],
    kill_times: list[float],
    notifications: Notifications,
    run_id: str,
) -> list[str]:
    """Kill each agent at its time and poll until every stage of every trial is seen
    (or TARGET_S + 60 s after its kill). Returns problems seen on the way."""
    problems: list[str] = []
    waiting = list(zip(kill_times, trials, strict=True))
    killed: list[Trial] = []
    am_query = urllib.parse.urlencode({"filter": f'alertname="{ALERT}"'})
    listening = notifications.server is not None
    while waiting or any(
        not t.done(listening) and time.monotonic() - t.killed_at < TARGET_S + 60 for t in killed
    ):
        now = time.monotonic()
        while waiting and waiting[0][0] <= now:
            _, trial = waiting.pop(0)
            process = processes[trial.service]
            process.popen.kill()  # SIGKILL: no last export on the way out
            trial.killed_at, trial.killed_wall = time.monotonic(), time.time()
            process.popen.wait()
            killed.append(trial)
        alerts = get_json(f"{stack.prometheus_url}/api/v1/alerts")["data"]["alerts"]
        seen = time.monotonic()
        by_service = {
            a["labels"].get("service"): a
            for a in alerts
            if a["labels"].get("alertname") == ALERT
            and a["labels"].get("service", "").endswith(run_id)
        }
        for trial in trials:
            alert = by_service.get(trial.service)
            if alert is None:
                continue
            if trial not in killed:
                problems.append(f"{ALERT} {alert['state']} for {trial.service}, still running")
                continue
            if alert["state"] == "firing" and trial.firing_s is None:
                trial.firing_s = seen - trial.killed_at
                trial.active_at_s = _unix(alert["activeAt"]) - trial.killed_wall
        in_am = get_json(f"{stack.alertmanager_url}/api/v2/alerts?{am_query}")
        seen = time.monotonic()
        for alert in in_am:
            for trial in killed:
                if alert["labels"].get("service") == trial.service and trial.alertmanager_s is None:
                    trial.alertmanager_s = seen - trial.killed_at
        for trial in killed:
            notified = notifications.received.get(trial.service)
            if notified is not None and trial.notified_s is None:
                trial.notified_s = notified - trial.killed_at
        time.sleep(max(0.0, now + POLL_S - time.monotonic()))
    return problems


def _unix(rfc3339: str) -> float:
    """Unix seconds of a Prometheus timestamp (RFC 3339, nanoseconds)."""
    return datetime.fromisoformat(rfc3339).timestamp()  # 3.11+: "Z" and 9 digits parse


def last_exports(stack: LocalStack, run_id: str) -> dict[str, float]:
    """The gateway's last-seen Unix time of each agent (its last accepted export)."""
    result = stack.query(
        f'max by (service) (connector_last_seen_timestamp_seconds{{service=~".*-{run_id}"}})'
    )
    return {r["metric"]["service"]: float(r["value"][1]) for r in result}


# -- report ---------------------------------------------------------------------------------


def print_report(trials: list[Trial], notifications: Notifications) -> dict[str, Any]:
    """Every trial, then p50 and max of each stage; returns the summary."""
    print(
        "\n  seconds: since its last accepted export at the kill (export age), then after the kill"
    )
    print(
        f"  {'agent':<24}{'tenant':<8}{'export age':>11}{'firing':>8}{'activeAt':>9}"
        f"{'in AM':>7}{'notified':>9}{'last export → firing':>22}"
    )

    def cell(value: float | None, width: int) -> str:
        return f"{value:{width}.1f}" if value is not None else f"{'-':>{width}}"

    for t in sorted(trials, key=lambda t: t.killed_at):
        export_to_firing = (
            t.since_last_export_at_kill + t.active_at_s if t.active_at_s is not None else None
        )
        print(
            f"  {t.service:<24}{t.tenant:<8}{t.since_last_export_at_kill:11.1f}"
            f"{cell(t.firing_s, 8)}{cell(t.active_at_s, 9)}{cell(t.alertmanager_s, 7)}"
            f"{cell(t.notified_s, 9)}{cell(export_to_firing, 22)}"
        )
    summary: dict[str, Any] = {}
    print(
        f"\n  seconds after the kill{'':<10}{'n':>4}{'p50':>8}{'max':>8}  within {TARGET_S:.0f} s"
    )
    for key, label in (
        ("firing_s", "firing in Prometheus (polled)"),
        ("active_at_s", "firing in Prometheus (activeAt)"),
        ("alertmanager_s", "in Alertmanager"),
        ("notified_s", "notification received"),
    ):
        values = [getattr(t, key) for t in trials if getattr(t, key) is not None]
        summary[key] = spread(values)
        if not values:
            continue
        within = sum(value <= TARGET_S for value in values)
        print(
            f"  {label:<32}{len(values):>4}{summary[key]['p50']:8.1f}{summary[key]['max']:8.1f}"
            f"  {within}/{len(trials)}"
        )
    if notifications.server is None:
        print(f"  (notifications not measured: {notifications.problem})")
    return summary


def run_trials(
    stack: LocalStack,
    keys: dict[str, str],
    count: int,
    run_id: str,
    export_ms: int | None,
    notifications: Notifications,
) -> tuple[list[str], list[Trial]]:
    """Start the agents, kill them and time their alerts; stops the stack at the end."""
    export_s = (export_ms or AgentConfig.from_env({}).export_interval_ms) / 1000
    try:
        # An agent's exports keep a fixed offset to the rule evaluations (30 s is a
        # multiple of 10 s), which sets how long after the threshold its alert fires:
        # the agents start spread over one evaluation interval so that their offsets
        # cover it, as a fleet's do.
        evaluation_s = seconds_of(prometheus_global(stack, "evaluation_interval"))
        processes, trials = start_agents(stack, keys, count, run_id, export_ms, evaluation_s)
        known_after = wait_known(stack, set(processes), run_id, timeout=export_s + 90)
        print(f"every agent known to the rules {known_after:.0f} s after the last one started")
        # One kill in each slice of an export interval, at a random moment inside it.
        slice_s = export_s / count
        begin = time.monotonic()
        kill_times = [begin + (n + random.random()) * slice_s for n in range(count)]
        random.shuffle(trials)
        problems = observe(stack, trials, processes, kill_times, notifications, run_id)
        exports = last_exports(stack, run_id)
        for trial in trials:
            trial.last_export_wall = exports.get(trial.service, float("nan"))
    finally:
        stack.stop_all()
    return problems, trials


def main() -> None:
    """Start the stack and the agents, kill them, time the alerts, print and save."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (~1 min)")
    parser.add_argument("--agents", type=int, help="agents killed, one trial each (default 12)")
    parser.add_argument("--tenants", type=int, default=3, help="tenants they are spread over")
    parser.add_argument("--agent", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.agent:
        run_agent()
        return
    quick = args.quick
    count = args.agents or (3 if quick else 12)
    export_ms = QUICK_EXPORT_MS if quick else None
    export_s = (export_ms or AgentConfig.from_env({}).export_interval_ms) / 1000
    run_id = uuid.uuid4().hex[:6]
    started = time.monotonic()
    run_dir = Path(tempfile.mkdtemp(prefix="bench-alerts-"))
    tenant_names = [f"bench{number}" for number in range(min(args.tenants, count))]
    notifications = Notifications(prefix="bench-alerts-")
    try:
        stack, keys = start_stack(run_dir, tenant_names, QUICK_THRESHOLD_S if quick else None)
        print(
            f"stack up in {time.monotonic() - started:.0f} s (logs in {run_dir}); "
            f"{count} agents over {len(tenant_names)} tenants, export every {export_s:g} s"
            + (f", quick: threshold {QUICK_THRESHOLD_S} s" if quick else "")
        )
        problems, trials = run_trials(stack, keys, count, run_id, export_ms, notifications)
    finally:
        notifications.close()
    summary = print_report(trials, notifications)
    for problem in sorted(set(problems)):
        print(f"  problem: {problem}")
    result = {
        "benchmark": "bench_alerts",
        "quick": quick,
        "agents": count,
        "tenants": len(tenant_names),
        "export_interval_s": export_s,
        "silence_threshold_s": QUICK_THRESHOLD_S if quick else 120,
        "target_s": TARGET_S,
        "poll_s": POLL_S,
        "notifications": notifications.address if notifications.server else notifications.problem,
        "summary": summary,
        "trials": [
            {**asdict(t), "since_last_export_at_kill_s": t.since_last_export_at_kill}
            for t in trials
        ],
        "problems": sorted(set(problems)),
        "logs": str(run_dir),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n({time.monotonic() - started:.0f} s; figures in {RESULTS})")


if __name__ == "__main__":
    main()
