"""Faults of the server side while agents keep counting: no count is lost, the gateway
never goes down.

Each test runs a stack of its own (Collector, gateway, Prometheus on free ports),
two real `otel_agents` connectors (tenants acme and globex) counting every 5 ms and
exporting cumulative totals every second, injects one fault for
E2E_FAULT_PAUSE_SECONDS (20 s by default), and after recovery asserts that
`sum by (tenant_id)` of their counters in Prometheus equals what they counted.
Each test prints its figures (run with -s) and appends them to fault-figures.json
under pytest's base temporary directory.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from fault_fixtures import (
    CountingAgent,
    Flood,
    Probe,
    RssSampler,
    gateway_requests,
    outcome_total,
    pause_seconds,
    record_figures,
    rss_bytes,
    wait_for_outcome_increase,
)
from gateway_fixtures import make_tenants
from needs import Binaries
from polling import poll

from stack.local import (
    LocalStack,
    Process,
    http_get,
)
from stack.supervisor import Supervisor
from stack.tcpproxy import TcpProxy

pytestmark = pytest.mark.e2e

AGENT_TENANTS = ("acme", "globex")
PROBE_TENANT = "probe"  # direct probes and floods: kept out of the agents' totals
PAUSE = pause_seconds()
RECOVERY_SECONDS = 30.0  # "recovers by itself": within this, once the fault is over
MiB = 1024 * 1024


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A tenants file with the agents' tenants and the probe's; their keys."""
    path = tmp_path / "tenants.json"
    return path, make_tenants(path, *AGENT_TENANTS, PROBE_TENANT)


@dataclass
class Faulty:
    """One test's stack and what it started."""

    stack: LocalStack
    keys: dict[str, str]
    binaries: Binaries
    collector: Process
    gateway: Process
    prometheus: Process
    proxy: TcpProxy | None
    run: str  # every agent's job starts with it

    def probe(self) -> Probe:
        return Probe(self.stack.ports.gateway_grpc, self.keys[PROBE_TENANT])

    def accepted(self) -> float:
        """The agents' accepted requests, as the gateway counts them."""
        counts = gateway_requests(self.stack.gateway_metrics_url)
        return outcome_total(counts, "accepted", set(AGENT_TENANTS))


@contextmanager
def faulty_stack(
    tmp_path: Path, binaries: Binaries, keys: tuple[Path, dict[str, str]], *, proxy: bool = False
) -> Iterator[Faulty]:
    """Collector, gateway (through a cuttable proxy if `proxy`) and Prometheus."""
    stack = LocalStack(tmp_path / "stack", tenants_file=keys[0])
    tcp_proxy = TcpProxy(stack.ports.collector_otlp).start() if proxy else None
    env = {
        "GATEWAY_RATE_LIMIT_REQUESTS_PER_SECOND": "0",  # floods must reach the forward
        "GATEWAY_MAX_GRPC_CALLS_PER_PEER": "0",  # the flood and the agents share 127.0.0.1
    }
    if tcp_proxy is not None:
        env["GATEWAY_COLLECTOR_ENDPOINT"] = tcp_proxy.address
    try:
        collector = stack.start_collector(binaries.collector)
        stack.wait_ready(collector)
        gateway = stack.start_gateway(extra_env=env)
        stack.wait_ready(gateway)
        prometheus = stack.start_prometheus(binaries.prometheus)
        stack.wait_ready(prometheus)
        yield Faulty(
            stack,
            keys[1],
            binaries,
            collector,
            gateway,
            prometheus,
            tcp_proxy,
            f"fault-{uuid.uuid4().hex[:8]}",
        )
    finally:
        stack.stop_all()
        if tcp_proxy is not None:
            tcp_proxy.close()


@contextmanager
def counting_agents(faulty: Faulty) -> Iterator[dict[str, CountingAgent]]:
    """One counting connector per agent tenant, flowing into Prometheus already."""
    agents = {
        tenant: CountingAgent(
            f"{faulty.run}-{tenant}", faulty.keys[tenant], faulty.stack.gateway_grpc_endpoint
        )
        for tenant in AGENT_TENANTS
    }
    try:
        for agent in agents.values():
            agent.start()
        faulty.stack.wait_for(
            _sum_query(faulty.run, "connector_bytes_sent_total"),
            lambda r: {s["metric"]["tenant_id"] for s in r} == set(AGENT_TENANTS),
        )
        yield agents
    finally:
        for agent in agents.values():
            agent.shutdown()


def _sum_query(run: str, metric: str) -> str:
    return f'sum by (tenant_id) ({metric}{{job=~"{run}-.*"}})'


def _by_tenant(result: list[dict[str, Any]]) -> dict[str, float]:
    return {s["metric"]["tenant_id"]: float(s["value"][1]) for s in result}


def assert_totals_exact(faulty: Faulty, agents: dict[str, CountingAgent]) -> dict[str, Any]:
    """Stop counting, export the final totals, wait until Prometheus has exactly them."""
    for agent in agents.values():
        agent.stop()
    for agent in agents.values():
        assert agent.flush(), f"{agent.job}: the final export failed"
    figures: dict[str, Any] = {}
    for metric, true_totals in (
        ("connector_bytes_sent_total", {t: float(a.nbytes) for t, a in agents.items()}),
        ("connector_records_sent_total", {t: float(a.rows) for t, a in agents.items()}),
    ):
        query = _sum_query(faulty.run, metric)
        deadline = time.monotonic() + 60
        seen: dict[str, float] = {}
        while time.monotonic() < deadline:
            seen = _by_tenant(faulty.stack.query(query))
            if seen == true_totals:
                break
            time.sleep(0.5)
        assert seen == true_totals, f"{metric}: Prometheus {seen}, agents counted {true_totals}"
        figures[metric] = {"agents": true_totals, "prometheus": seen}
    figures["counting_calls"] = {t: a.calls for t, a in agents.items()}
    return figures


def _healthz_and_readyz(faulty: Faulty) -> tuple[int, float, int]:
    """/healthz status and seconds, /readyz status."""
    started = time.monotonic()
    health, _ = http_get(f"{faulty.stack.gateway_http_url}/healthz", timeout=5.0)
    seconds = time.monotonic() - started
    ready, _ = http_get(f"{faulty.stack.gateway_http_url}/readyz", timeout=5.0)
    return health, seconds, ready


def _wait_readyz(faulty: Faulty, status: int, timeout: float = 30.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if http_get(f"{faulty.stack.gateway_http_url}/readyz", timeout=5.0)[0] == status:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"/readyz never answered {status} within {timeout:.0f} s")


# -- the gateway ------------------------------------------------------------------------------


def test_a_gateway_killed_and_restarted_later_loses_no_count(
    tmp_path: Path,
    binaries: Binaries,
    keys: tuple[Path, dict[str, str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with faulty_stack(tmp_path, binaries, keys) as faulty, counting_agents(faulty) as agents:
        gateway = faulty.gateway
        rss_before = rss_bytes(gateway.popen.pid)
        gateway.popen.send_signal(signal.SIGKILL)
        assert gateway.popen.wait(timeout=10) == -signal.SIGKILL
        killed = time.monotonic()
        calls_before = sum(a.calls for a in agents.values())
        time.sleep(PAUSE)  # the outage itself
        calls_during = sum(a.calls for a in agents.values()) - calls_before

        faulty.stack.restart(gateway)  # same argv, environment, ports; log appended
        restarted = time.monotonic()
        ready_after = faulty.stack.wait_ready(gateway, timeout=30)
        wait_for_outcome_increase(
            faulty.stack.gateway_metrics_url, "accepted", set(AGENT_TENANTS), since=0
        )
        first_accepted = time.monotonic() - restarted
        time.sleep(1.0)  # keep counting with the gateway back
        figures = assert_totals_exact(faulty, agents)
        assert calls_during > PAUSE * 100  # the agents counted on throughout
        record_figures(
            "gateway_sigkill",
            tmp_path_factory,
            {
                "outage_seconds": round(restarted - killed, 1),
                "counting_calls_during_outage": calls_during,
                "gateway_ready_seconds_after_restart": round(ready_after, 2),
                "first_accepted_agent_export_seconds_after_restart": round(first_accepted, 2),
                "gateway_rss_mib_before_kill": round(rss_before / MiB, 1),
                **figures,
            },
        )


# -- the Collector ------------------------------------------------------------------------------


def test_a_restarted_collector_loses_no_count(
    tmp_path: Path,
    binaries: Binaries,
    keys: tuple[Path, dict[str, str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with faulty_stack(tmp_path, binaries, keys) as faulty, counting_agents(faulty) as agents:
        probe = faulty.probe()
        faulty.stack.stop(faulty.collector)  # SIGTERM
        stopped = time.monotonic()
        code, probe_seconds = probe.export()
        assert code == grpc.StatusCode.UNAVAILABLE
        health, health_seconds, ready = _healthz_and_readyz(faulty)
        assert (health, ready) == (200, 503)
        time.sleep(max(0.0, PAUSE - (time.monotonic() - stopped)))

        unavailable = outcome_total(
            gateway_requests(faulty.stack.gateway_metrics_url),
            "collector_unavailable",
            set(AGENT_TENANTS),
        )
        assert unavailable > 0  # the agents were told UNAVAILABLE, and retried
        collector = faulty.stack.start_collector(faulty.binaries.collector)  # same ports
        faulty.stack.wait_ready(collector)
        back = time.monotonic()
        since = faulty.accepted()
        recovery = probe.seconds_until_accepted()
        agents_recovery = wait_for_outcome_increase(
            faulty.stack.gateway_metrics_url, "accepted", set(AGENT_TENANTS), since
        )
        readyz_after = _wait_readyz(faulty, 200)
        probe.close()
        time.sleep(1.0)
        figures = assert_totals_exact(faulty, agents)
        record_figures(
            "collector_restart",
            tmp_path_factory,
            {
                "collector_down_seconds": round(back - stopped, 1),
                "probe_status_while_down": code.name,
                "probe_seconds_while_down": round(probe_seconds, 3),
                "healthz_seconds_while_down": round(health_seconds, 3),
                "agent_requests_answered_unavailable": unavailable,
                "gateway_recovery_seconds": round(recovery, 2),
                "agents_first_accepted_seconds": round(agents_recovery, 2),
                "readyz_200_seconds_after_collector_ready": round(readyz_after, 2),
                **figures,
            },
        )


# -- Prometheus ---------------------------------------------------------------------------------


def _raw_samples(faulty: Faulty, at: float) -> dict[str, list[tuple[float, str]]]:
    result = faulty.stack.query(f'connector_bytes_sent_total{{job=~"{faulty.run}-.*"}}[15m]', at=at)
    return {s["metric"]["tenant_id"]: [tuple(v) for v in s["values"]] for s in result}


def test_a_restarted_prometheus_keeps_its_history(
    tmp_path: Path,
    binaries: Binaries,
    keys: tuple[Path, dict[str, str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with faulty_stack(tmp_path, binaries, keys) as faulty, counting_agents(faulty) as agents:
        started = time.time()
        # A few scrapes of history to keep (the last one may be newer than `at`).
        faulty.stack.wait_for(
            f'min(count_over_time(connector_bytes_sent_total{{job=~"{faulty.run}-.*"}}[15m]))',
            lambda r: bool(r) and float(r[0]["value"][1]) >= 4,
        )
        # Samples stamped up to `at` have all been stored by now (a scrape takes ms).
        at = time.time() - 2.0
        raw_before = _raw_samples(faulty, at)
        sums = _sum_query(faulty.run, "connector_bytes_sent_total")
        range_before = faulty.stack.query_range(sums, started - 30, at, step=1.0)

        faulty.stack.stop(faulty.prometheus)  # SIGTERM
        stopped = time.monotonic()
        time.sleep(PAUSE)
        prometheus = faulty.stack.start_prometheus(faulty.binaries.prometheus)  # same TSDB dir
        ready_after = faulty.stack.wait_ready(prometheus)
        down = time.monotonic() - stopped

        assert all(len(samples) >= 3 for samples in raw_before.values())
        assert _raw_samples(faulty, at) == raw_before
        assert faulty.stack.query_range(sums, started - 30, at, step=1.0) == range_before
        figures = assert_totals_exact(faulty, agents)
        record_figures(
            "prometheus_restart",
            tmp_path_factory,
            {
                "prometheus_down_seconds": round(down, 1),
                "prometheus_ready_seconds_after_start": round(ready_after, 2),
                "samples_before_restart_kept": {t: len(v) for t, v in raw_before.items()},
                "range_points_before_restart_kept": sum(len(s["values"]) for s in range_before),
                **figures,
            },
        )


# -- the network between the gateway and the Collector ---------------------------------------------


@pytest.mark.parametrize("cut", ["refuse", "blackhole", "blackhole-stranded"])
def test_a_cut_to_the_collector_is_answered_unavailable_and_heals_by_itself(
    cut: str,
    tmp_path: Path,
    binaries: Binaries,
    keys: tuple[Path, dict[str, str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    concurrency = int(os.environ.get("E2E_FAULT_FLOOD_CONCURRENCY", "64"))
    with (
        faulty_stack(tmp_path, binaries, keys, proxy=True) as faulty,
        counting_agents(faulty) as agents,
    ):
        assert faulty.proxy is not None
        gateway_pid = faulty.gateway.popen.pid
        probe = faulty.probe()
        unavailable_before = outcome_total(
            gateway_requests(faulty.stack.gateway_metrics_url), "collector_unavailable"
        )
        rss_before = rss_bytes(gateway_pid)
        health_seconds: list[float] = []
        with (
            RssSampler(lambda: gateway_pid) as rss,
            Flood(faulty.stack.ports.gateway_grpc, faulty.keys[PROBE_TENANT], concurrency) as flood,
        ):
            if cut == "refuse":
                faulty.proxy.refuse()
            else:  # "blackhole-stranded": the connections cut now never carry bytes again
                faulty.proxy.blackhole()
            cut_at = time.monotonic()
            code, probe_seconds = probe.export()
            assert code == grpc.StatusCode.UNAVAILABLE
            readyz_503 = _wait_readyz(faulty, 503)
            while time.monotonic() - cut_at < PAUSE:
                health, seconds, ready = _healthz_and_readyz(faulty)
                assert (health, ready) == (200, 503)
                health_seconds.append(seconds)
                time.sleep(1.0)
            rss_end_of_cut = rss_bytes(gateway_pid)
            faulty.proxy.restore(strand=cut == "blackhole-stranded")
            restored = time.monotonic()
            since = faulty.accepted()
            recovery = probe.seconds_until_accepted(timeout=RECOVERY_SECONDS)
            agents_recovery = wait_for_outcome_increase(
                faulty.stack.gateway_metrics_url, "accepted", set(AGENT_TENANTS), since
            )
        readyz_200 = _wait_readyz(faulty, 200)
        counts = gateway_requests(faulty.stack.gateway_metrics_url)
        unavailable = outcome_total(counts, "collector_unavailable") - unavailable_before
        agents_unavailable = outcome_total(counts, "collector_unavailable", set(AGENT_TENANTS))
        assert agents_unavailable > 0  # the agents' exporters were answered UNAVAILABLE
        assert faulty.gateway.popen.poll() is None
        assert faulty.gateway.popen.pid == gateway_pid  # never went down
        probe.close()
        time.sleep(1.0)
        figures = assert_totals_exact(faulty, agents)
        record_figures(
            f"network_cut_{cut}",
            tmp_path_factory,
            {
                "cut_seconds": round(restored - cut_at, 1),
                "probe_status_during_cut": code.name,
                "probe_seconds_during_cut": round(probe_seconds, 3),
                "readyz_503_seconds_after_cut": round(readyz_503, 2),
                "healthz_max_seconds_during_cut": round(max(health_seconds), 3),
                "requests_answered_unavailable": unavailable,
                "agent_requests_answered_unavailable": agents_unavailable,
                "flood_concurrency": concurrency,
                "flood_statuses": dict(flood.statuses),
                "flood_slowest_answer_seconds": dict(flood.slowest),
                "gateway_rss_mib": {
                    "before": round(rss_before / MiB, 1),
                    "peak": round(rss.peak / MiB, 1),
                    "end_of_cut": round(rss_end_of_cut / MiB, 1),
                },
                "recovery_seconds_to_first_accepted_export": round(recovery, 2),
                "agents_first_accepted_seconds_after_restore": round(agents_recovery, 2),
                "readyz_200_seconds_after_recovery": round(readyz_200, 2),
                "proxy_connections": faulty.proxy.connections,
                **figures,
            },
        )
        # Generous: a bound, not a benchmark (the peak is in the figures).
        assert rss.peak < rss_before + 200 * MiB


# -- supervision of the native stack --------------------------------------------------------------


def test_the_supervisor_brings_back_a_killed_gateway_and_collector(
    tmp_path: Path,
    binaries: Binaries,
    keys: tuple[Path, dict[str, str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    stack = LocalStack(tmp_path / "stack", tenants_file=keys[0])
    reports: list[str] = []
    supervisor = Supervisor(stack, report=reports.append).start()  # the demo's back-off
    try:
        collector = stack.start_collector(binaries.collector)
        stack.wait_ready(collector)
        gateway = stack.start_gateway()
        stack.wait_ready(gateway)
        supervisor.watch(collector, gateway)
        probe = Probe(stack.ports.gateway_grpc, keys[1][PROBE_TENANT])
        assert probe.export()[0] == grpc.StatusCode.OK

        killed_pid = gateway.popen.pid
        os.kill(killed_pid, signal.SIGKILL)
        killed = time.monotonic()
        poll("the gateway restarted", lambda: gateway.popen.pid != killed_pid, timeout=10)
        stack.wait_ready(gateway, timeout=30)
        gateway_back = time.monotonic() - killed
        assert gateway_back < 10
        assert probe.seconds_until_accepted(timeout=10) < 5

        killed_pid = collector.popen.pid
        os.kill(killed_pid, signal.SIGKILL)
        killed = time.monotonic()
        readyz = f"{stack.gateway_http_url}/readyz"
        poll(
            "/readyz answers 503",
            lambda: http_get(readyz, timeout=2.0)[0] == 503,
            timeout=10,
            every=0.05,
        )
        readyz_503 = time.monotonic() - killed
        poll("/readyz answers 200", lambda: http_get(readyz, timeout=2.0)[0] == 200, timeout=30)
        readyz_200 = time.monotonic() - killed
        assert collector.popen.pid != killed_pid
        assert readyz_200 < 10
        assert probe.seconds_until_accepted(timeout=10) < 5
        probe.close()
        assert any("gateway" in r and "-9 (SIGKILL)" in r for r in reports)
        assert any("collector" in r and "-9 (SIGKILL)" in r for r in reports)
        record_figures(
            "supervisor",
            tmp_path_factory,
            {
                "gateway_ready_seconds_after_sigkill": round(gateway_back, 2),
                "collector_killed_readyz_503_after_seconds": round(readyz_503, 2),
                "collector_killed_readyz_200_after_seconds": round(readyz_200, 2),
                "reports": reports,
            },
        )
    finally:
        supervisor.close()
        started = list(stack.processes)
        stack.stop_all()
    # A deliberate stop is not fought: everything is down and stays down.
    time.sleep(1.5)
    assert all(p.popen.poll() is not None for p in started)
    assert len(supervisor.restarts) == 2
