"""What a real fleet does, against the real stack: which events page on-call and which must not.

Each scenario runs real agents (bench/fleet_agent.py processes: otel_agents
connectors and Prefect data agents, a plain OpenTelemetry client, `otel-agents
check`) against a stack with the repository's rules, an Alertmanager with its
alertmanager.yml and the gateway's admin API. All agents start together, then every
scenario's event happens at about the same moment, and Alertmanager is polled every
second until well past the moment a false page would show (the silence threshold
plus evaluation and grouping delays).

A page is a critical alert in Alertmanager routed to the `oncall` receiver; time to
page runs from the event (the kill, the cut, the revocation) to the first poll that
shows it. Used by tests/e2e/test_fleet_alerts.py (one trial of each) and
bench/bench_alerts.py (many trials of the kill cases).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway import tenants
from stack.local import (
    REPO,
    LocalStack,
    Process,
    StackError,
    alertmanager_binary,
    collector_binary,
    http_get,
    prometheus_binary,
)
from stack.prefect_server import prefect_server
from stack.tcpproxy import TcpProxy

PAGE_DEADLINE_S = 180.0
"""Every death must page within this (the target of docs/operations.md)."""
QUIET_UNTIL_S = 200.0
"""Watch this long after the events: a false page would have come by then (120 s
threshold + an export interval + evaluation + group_wait)."""
RESTART_AFTER_S = 5.0
RETIRE_AFTER_S = 10.0


@dataclass
class Agent:
    """One agent process of a scenario (a cron script's starts with its event)."""

    mode: str
    tenant: str
    service: str
    name: str
    argv: list[str]
    env: dict[str, str]
    process: Process | None = None
    instance: str = ""


@dataclass
class Scenario:
    """An event in a fleet and what on-call must hear of it."""

    name: str
    event: str
    """kill, term, restart, cut, revoke, retire, cron, check, fail, clash (a second
    process under the first's identity starts)."""
    expect: str | None
    """The alert it must raise (ConnectorSilent, ...), or None: no alert at all."""
    tenant: str
    service: str
    agents: list[Agent] = field(default_factory=list)
    target: int = 0
    """Which of `agents` the event hits."""
    event_at: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """What happened in one scenario."""

    name: str
    event: str
    expected: str | None
    alerts: list[str]
    """Alert names (with `@instance` for per-instance ones) raised for its agents."""
    seconds_to_alert: float | None
    fleet_status: dict[str, str]
    """instance → status in /api/fleet at the end."""
    detail: dict[str, Any]

    @property
    def ok(self) -> bool:
        """Exactly the expected alert (in time), or none when none is expected."""
        if self.expected is None:
            return not self.alerts
        return (
            self.alerts == [self.expected]
            and self.seconds_to_alert is not None
            and self.seconds_to_alert <= PAGE_DEADLINE_S
        )


@dataclass
class FleetRun:
    """The stack, the credentials and the Prefect server the scenarios use."""

    stack: LocalStack
    tenants_file: Path
    keys: dict[str, str]
    """tenant → key; `revoked` keys are in `spare_keys`."""
    admin_key: str
    prefect_env: dict[str, str]
    work_dir: Path
    export_interval_ms: int = 5000
    start_gap_s: float = 0.0
    """Pause before each agent starts: spread over an export interval, the kills fall
    at every phase of the agents' export cycles."""
    scenarios: list[Scenario] = field(default_factory=list)
    proxies: list[TcpProxy] = field(default_factory=list)
    spare_keys: dict[str, tuple[str, str]] = field(default_factory=dict)
    """service → (tenant, key) of agents that get a key of their own (to revoke)."""
    alerts_seen: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    """fingerprint → (first seen, alert) of every alert Alertmanager showed."""
    log: Callable[[str], None] = print

    # -- starting agents ------------------------------------------------------------

    def add(
        self,
        name: str,
        event: str,
        expect: str | None,
        mode: str,
        tenant: str,
        service: str,
        count: int = 1,
        target: int = 0,
        *,
        containers: bool = False,
        env: dict[str, str] | None = None,
    ) -> Scenario:
        """A scenario of `count` agents of one service (none for `check`); the event
        hits agent `target`. With `containers`, each agent runs in UTS and mount
        namespaces of its own (root only: its own host name and temporary directory,
        the machine's /etc/machine-id); `env` is added to each agent's environment."""
        scenario = Scenario(name, event, expect, tenant, service, target=target)
        for index in range(count if event != "check" else 0):
            host = f"{service}-pod-{index}" if containers else ""
            scenario.agents.append(
                self._agent(mode, tenant, service, event, index, host=host, extra=env)
            )
        self.scenarios.append(scenario)
        return scenario

    def _agent(
        self,
        mode: str,
        tenant: str,
        service: str,
        event: str,
        index: int,
        *,
        host: str = "",
        extra: dict[str, str] | None = None,
    ) -> Agent:
        key = self.keys[tenant]
        endpoint = self.stack.gateway_grpc_endpoint
        if event == "revoke":
            table, key = tenants.add_key(tenants.load(self.tenants_file), tenant)
            tenants.save(self.tenants_file, table)
            self.spare_keys[service] = (tenant, tenants.active_key_ids(table, tenant)[-1])
        if event == "cut":
            proxy = TcpProxy(self.stack.ports.gateway_grpc).start()
            self.proxies.append(proxy)
            endpoint = f"http://{proxy.address}"
        # The slot locks' directory must exist: without it every process of a
        # service gets one id (and the trio would be one clashing agent).
        (self.work_dir / "locks").mkdir(mode=0o700, exist_ok=True)
        env = {
            "PYTHONPATH": str(REPO),
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_AGENTS_API_KEY": key,
            "OTEL_METRIC_EXPORT_INTERVAL": str(self.export_interval_ms),
            "OTEL_SERVICE_NAME": service,
            "XDG_RUNTIME_DIR": str(self.work_dir / "locks"),
            "FLEET_AGENT_FAIL_FILE": str(self.work_dir / f"{service}.fail"),
            **self.prefect_env,
            **(extra or {}),
        }
        name = f"agent-{service}-{index}"
        argv = [sys.executable, "-m", "bench.fleet_agent", mode]
        if host:
            inner = f"exec env -u XDG_RUNTIME_DIR {shlex.join(argv)}"
            argv = ["unshare", "--uts", "--mount", "sh", "-c"]
            argv.append(f"hostname {host} && export TMPDIR=$(mktemp -d) && {inner}")
        agent = Agent(mode, tenant, service, name, argv, env)
        if mode != "cron":  # a cron script starts with its event
            time.sleep(self.start_gap_s * random.random() * 2)
            agent.process = self.stack.start_process(name, argv, env)
        return agent

    def wait_until_reporting(self, timeout: float = 120.0) -> float:
        """Seconds until every started agent announced its id and Prometheus's
        liveness rules know every otel_agents agent."""
        started = time.monotonic()
        deadline = started + timeout
        running = [a for s in self.scenarios for a in s.agents if a.process is not None]
        while time.monotonic() < deadline:
            self.poll_alerts()  # a false page at start-up counts too
            for agent in running:
                if not agent.instance and agent.process is not None:
                    agent.instance = _announced_instance(agent.process)
            pending = [a for a in running if not a.instance]
            if not pending:
                pending = [
                    a for a in running if a.mode != "otel-client" and not self._rule_knows(a)
                ]
            if not pending:
                return time.monotonic() - started
            time.sleep(1.0)
        raise StackError(f"not reporting after {timeout:.0f} s: {[a.name for a in pending]}")

    def _rule_knows(self, agent: Agent) -> bool:
        family = "connector" if agent.mode == "connector" else "agent"
        rule = f"tenant_service_instance:{family}_last_seen_age_seconds"
        selector = f'{rule}{{tenant_id="{agent.tenant}",instance="{agent.instance}"}}'
        return bool(self.stack.query(selector))

    # -- events ------------------------------------------------------------------------

    def run_events(self) -> None:
        """Every scenario's event, one after the other (within a second or two)."""
        delayed: list[tuple[float, Callable[[], None]]] = []
        for scenario in self.scenarios:
            scenario.event_at = time.time()
            agent = scenario.agents[scenario.target] if scenario.agents else None
            process = agent.process if agent is not None else None
            event = scenario.event
            if event in ("kill", "restart", "retire") and process is not None:
                _signal(process, signal.SIGKILL)
            if event == "term" and process is not None:
                _signal(process, signal.SIGTERM)
            if event == "restart" and process is not None:
                delayed.append((scenario.event_at + RESTART_AFTER_S, self._restarter(process)))
            if event == "retire" and agent is not None:
                delayed.append((scenario.event_at + RETIRE_AFTER_S, self._retirer(scenario, agent)))
            if event == "cut":
                self.proxies[0].blackhole()
            if event == "revoke":
                tenant, key_id = self.spare_keys[scenario.service]
                table, _ = tenants.revoke_keys(tenants.load(self.tenants_file), tenant, [key_id])
                tenants.save(self.tenants_file, table)
            if event == "fail" and agent is not None:
                (self.work_dir / f"{agent.service}.fail").write_text("fail\n")
            if event == "cron" and agent is not None:
                agent.process = self.stack.start_process(agent.name, agent.argv, agent.env)
            if event == "check":
                scenario.detail["check"] = self._check(scenario)
            if event == "clash" and agent is not None:
                twin = Agent(**{**agent.__dict__, "name": f"{agent.name}-twin", "process": None})
                twin.process = self.stack.start_process(twin.name, twin.argv, twin.env)
                scenario.agents.append(twin)
        for at, action in sorted(delayed, key=lambda item: item[0]):
            time.sleep(max(0.0, at - time.time()))
            action()

    def _restarter(self, process: Process) -> Callable[[], None]:
        def restart() -> None:
            self.stack.restart(process)

        return restart

    def _retirer(self, scenario: Scenario, agent: Agent) -> Callable[[], None]:
        def retire() -> None:
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "gateway.cli",
                    "agents",
                    "forget",
                    agent.tenant,
                    agent.instance[:8],
                    "--url",
                    self.stack.gateway_http_url,
                ],
                env={
                    **os.environ,
                    "OTEL_GATEWAY_ADMIN_KEY": self.admin_key,
                    "PYTHONPATH": str(REPO),
                },
                capture_output=True,
                text=True,
                cwd=REPO,
                check=False,
            )
            scenario.detail["forget"] = (
                result.returncode,
                result.stdout.strip() + result.stderr.strip(),
            )

        return retire

    def _check(self, scenario: Scenario) -> tuple[int, str]:
        result = subprocess.run(
            [sys.executable, "-m", "otel_agents.check", "check"],
            env={
                **os.environ,
                "PYTHONPATH": str(REPO),
                "OTEL_EXPORTER_OTLP_ENDPOINT": self.stack.gateway_grpc_endpoint,
                "OTEL_AGENTS_API_KEY": self.keys[scenario.tenant],
            },
            capture_output=True,
            text=True,
            cwd=REPO,
            check=False,
        )
        return result.returncode, result.stdout

    # -- watching ----------------------------------------------------------------------

    def watch(self, until_s: float = QUIET_UNTIL_S) -> None:
        """Poll Alertmanager every second until `until_s` after the first event."""
        first = min(s.event_at for s in self.scenarios)
        while time.time() < first + until_s:
            self.poll_alerts()
            time.sleep(1.0)

    def poll_alerts(self) -> None:
        """Note every alert Alertmanager shows now, with when it was first seen."""
        status, body = http_get(f"{self.stack.alertmanager_url}/api/v2/alerts", timeout=5)
        if status != 200:
            return
        now = time.time()
        for alert in json.loads(body):
            self.alerts_seen.setdefault(alert["fingerprint"], (now, alert))

    def outcomes(self) -> list[Outcome]:
        """Each scenario's alerts and fleet status, from what was watched."""
        fleet = self.fleet()
        results = []
        for scenario in self.scenarios:
            mine = [
                (seen, alert)
                for seen, alert in self.alerts_seen.values()
                if alert["labels"].get("tenant_id") == scenario.tenant
                and alert["labels"].get("service") == scenario.service
            ]
            names = sorted(_alert_name(alert) for _, alert in mine)
            times = [seen - scenario.event_at for seen, _ in mine]
            statuses = {
                a["instance"]: a["status"]
                for a in fleet.get(scenario.tenant, [])
                if a["service"] == scenario.service
            }
            expected = scenario.expect
            if expected and scenario.expect in ("ConnectorSilent", "DataAgentSilent"):
                expected = f"{scenario.expect}@{scenario.agents[scenario.target].instance}"
            if expected and scenario.expect == "AgentIdentityClash":
                expected = f"{scenario.expect}@{scenario.agents[0].instance}"
            if expected and scenario.expect == "DataAgentFlowFailureRateHigh":
                expected = f"{scenario.expect}@flaky-flow"
            results.append(
                Outcome(
                    scenario.name,
                    scenario.event,
                    expected,
                    names,
                    min(times) if times else None,
                    statuses,
                    {**scenario.detail, "instances": [a.instance for a in scenario.agents]},
                )
            )
        return results

    def unexplained_pages(self) -> list[dict[str, Any]]:
        """Critical alerts that belong to no scenario's expected page (false pages)."""
        expected = {
            (s.tenant, s.service)
            for s in self.scenarios
            if s.expect in ("ConnectorSilent", "DataAgentSilent")
        }
        pages = []
        for _, alert in self.alerts_seen.values():
            labels = alert["labels"]
            if labels.get("severity") != "critical":
                continue
            if (labels.get("tenant_id"), labels.get("service")) in expected:
                continue
            pages.append(labels)
        return pages

    def fleet(self) -> dict[str, list[dict[str, Any]]]:
        """tenant → agents, from the gateway's admin API."""
        request = urllib.request.Request(  # noqa: S310 (loopback)
            f"{self.stack.gateway_http_url}/api/fleet",
            headers={"authorization": f"Bearer {self.admin_key}"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (loopback)
            document = json.loads(response.read())
        return {t["tenant_id"]: t["agents"] for t in document["tenants"]}

    def close(self) -> None:
        """Stop the proxies (the stack stops the agents)."""
        for proxy in self.proxies:
            proxy.close()


def _alert_name(alert: dict[str, Any]) -> str:
    labels = alert["labels"]
    suffix = labels.get("flow") or labels.get("instance")
    return f"{labels['alertname']}@{suffix}" if suffix else labels["alertname"]


def _announced_instance(process: Process) -> str:
    try:
        for line in process.log.read_text(errors="replace").splitlines():
            if line.startswith('{"instance"'):
                return str(json.loads(line)["instance"])
    except (OSError, ValueError):
        pass
    return ""


def _signal(process: Process, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.popen.pid, signum)


TENANTS = ("fleet-a", "fleet-b")


@contextlib.contextmanager
def fleet_stack(run_dir: Path, export_interval_ms: int = 5000) -> Iterator[FleetRun]:
    """Collector, gateway (with an admin key), Prometheus, Alertmanager and a Prefect
    server, from the repository's files on free ports; yields a FleetRun without
    scenarios and stops exactly what it started. StackError when a binary is missing."""
    binaries = (collector_binary(), prometheus_binary(), alertmanager_binary())
    tenants_file = run_dir / "tenants.json"
    table = tenants.TenantTable()
    keys = {}
    for name in TENANTS:
        table, keys[name] = tenants.add_key(table, name)
    tenants.save(tenants_file, table)
    admin_key = secrets.token_urlsafe(24)
    stack = LocalStack(run_dir / "stack", tenants_file=tenants_file)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(stack.stop_all)
        collector = stack.start_collector(binaries[0])
        stack.wait_ready(collector)
        gateway = stack.start_gateway(
            {"GATEWAY_ADMIN_KEY_SHA256": hashlib.sha256(admin_key.encode()).hexdigest()}
        )
        for process in (gateway, stack.start_prometheus(binaries[1])):
            stack.wait_ready(process)
        stack.wait_ready(stack.start_alertmanager(binaries[2]))
        prefect_url = cleanup.enter_context(prefect_server(run_dir / "prefect"))
        run = FleetRun(
            stack,
            tenants_file,
            keys,
            admin_key,
            {
                "PREFECT_API_URL": prefect_url,
                "PREFECT_HOME": str(run_dir / "prefect-client"),
                "PREFECT_LOGGING_LEVEL": "WARNING",
            },
            run_dir,
            export_interval_ms,
        )
        cleanup.callback(run.close)
        yield run


def add_every_scenario(run: FleetRun, trials: int = 1) -> None:
    """The scenarios of docs/operations.md's table; `trials` of each kill case."""
    a, b = TENANTS
    for trial in range(trials):
        run.add(
            "SIGKILL of one of three same-named connectors",
            "kill",
            "ConnectorSilent",
            "connector",
            a,
            f"trio-{trial}-connector",
            count=3,
            target=1,
        )
        run.add(
            "SIGKILL of a lone connector",
            "kill",
            "ConnectorSilent",
            "connector",
            a,
            f"lone-{trial}-connector",
        )
    run.add("SIGKILL of a data agent", "kill", "DataAgentSilent", "data-agent", a, "killed-etl")
    run.add(
        "network cut to one agent", "cut", "ConnectorSilent", "connector", a, "remote-connector"
    )
    run.add(
        "gateway refuses the agent's key (revoked)",
        "revoke",
        "ConnectorSilent",
        "connector",
        b,
        "revoked-connector",
    )
    run.add("graceful stop (SIGTERM)", "term", None, "connector", a, "graceful-connector")
    run.add(
        "agent restart (SIGKILL, back 5 s later)",
        "restart",
        None,
        "connector",
        a,
        "restart-connector",
    )
    run.add("cron flow script that exits", "cron", None, "cron", a, "cron-etl")
    run.add("otel-agents check", "check", None, "connector", a, "otel-agents-check")
    run.add(
        "a generic OTel client (no agent type), killed", "kill", None, "otel-client", b, "js-client"
    )
    run.add(
        "retiring an agent (SIGKILL, retired 10 s later)",
        "retire",
        None,
        "connector",
        b,
        "retired-connector",
    )
    if os.geteuid() == 0 and shutil.which("unshare"):
        run.add(
            "SIGKILL of one of two containers sharing the machine id",
            "kill",
            "ConnectorSilent",
            "connector",
            a,
            "container-connector",
            count=2,
            target=1,
            containers=True,
        )
    run.add(
        "a second process with the same service.instance.id",
        "clash",
        "AgentIdentityClash",
        "connector",
        b,
        "shared-id-connector",
        env={"OTEL_RESOURCE_ATTRIBUTES": "service.instance.id=shared-id-connector-0"},
    )
    run.add(
        "a flow that starts failing among healthy flows",
        "fail",
        "DataAgentFlowFailureRateHigh",
        "data-agent",
        b,
        "flows-etl",
    )


def format_table(outcomes: list[Outcome]) -> str:
    """One line per scenario: event, expected alert, what came, after how long."""
    lines = [f"{'scenario':<52} {'expected':<30} {'got':<44} {'after':>7}  ok"]
    for o in outcomes:
        expected = (o.expected or "no alert").split("@")[0]
        got = ", ".join(name.split("@")[0] for name in o.alerts) or "no alert"
        after = f"{o.seconds_to_alert:.0f} s" if o.seconds_to_alert is not None else "-"
        lines.append(f"{o.name:<52} {expected:<30} {got:<44} {after:>7}  {'yes' if o.ok else 'NO'}")
    return "\n".join(lines)
