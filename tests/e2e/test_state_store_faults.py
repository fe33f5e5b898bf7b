"""The state store stopped, killed and emptied under load, end to end (docs/scaling.md,
"Gateway replicas", Faults).

Two gateway replicas share one real `redis-server` in front of one Collector, with
Prometheus running the repository's rules. Four real agents (bench/fleet_agent.py
connectors, two on each replica) count records and export every second while a flood
of exports goes to both replicas. Then Redis is stopped (SIGSTOP) for 30 s, resumed,
killed (SIGKILL) and restarted empty on its port. Then:

- every agent's records counter reaches, in Prometheus, exactly the total the agent
  counted, and every export of the agents was accepted (the flood's, at half its
  tenant's rate limit, are never refused either);
- no agent alert was pending or firing at any point (Prometheus's ALERTS, watched
  through the whole run and read back from its TSDB), while each gateway said the
  store was unreachable (`gateway_state_store_up` 0, GatewayStateStoreDown pending:
  its `for` of 1 minute is longer than the outage);
- within seconds of the restart both replicas' `/api/fleet` are whole again (not
  partial, every agent up), the emptied store holds every agent's row again, and a
  tenant's rate limit is one global budget again.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from fault_fixtures import Flood, gateway_requests
from polling import poll
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from replica_fixtures import (
    AGENT_TENANT,
    LIMITED_TENANT,
    RateProbe,
    Replicas,
    announced,
    probe_rate_limit,
    replica_stack,
)

from bench.fleet_agent import STOP_FILE_ENV
from gateway.state_redis import PREFIX
from stack.local import REPO, StackError, http_get

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

EXPORT_INTERVAL_MS = 1000
PAUSE_S = 30.0
"""How long Redis is stopped."""
RATE, BURST = 2.0, 10
"""Tenant `limited`'s rate limit (requests/s and burst)."""
PROBES, PROBE_GAP_S = 100, 0.1
"""Rate-limit probes: 100 requests over 10 s, to replica 0 alone."""
FLOOD_TENANT, FLOOD_RATE = "flood", 40.0
"""The flood's tenant, and its exports per second to each replica."""
WHOLE_WITHIN_S = 15.0
"""The fleet and the limits are whole again within this after the restart."""
AGENT_ALERTS = sorted(
    {
        rule["alert"]
        for group in yaml.safe_load((REPO / "prometheus/rules/agents.yml").read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
)
"""Every alert about agents and their tenants' data (prometheus/rules/agents.yml)."""
AGENTS_PAGED = f'ALERTS{{alertname=~"{"|".join(AGENT_ALERTS)}", tenant_id!="{LIMITED_TENANT}"}}'
"""Any of them, pending or firing, except the rejections of the rate-limited tenant."""
STORE_DOWN = 'ALERTS{alertname="GatewayStateStoreDown"}'


@dataclass
class AlertWatch:
    """Asks Prometheus every second, on a thread, for the agent alerts and the store's
    alert; keeps every one seen."""

    replicas: Replicas
    agent_alerts: list[dict[str, str]] = field(default_factory=list)
    store_alerts: list[dict[str, str]] = field(default_factory=list)
    looks: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            query = self.replicas.stack.query
            try:
                agents, store = query(AGENTS_PAGED), query(STORE_DOWN)
            except StackError:
                continue  # a slow answer on a loaded machine: `looks` counts the answers
            self.agent_alerts += [s["metric"] for s in agents]
            self.store_alerts += [s["metric"] for s in store]
            self.looks += 1

    def __enter__(self) -> AlertWatch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


@dataclass
class Outage:
    """What happened around the outage, and when (Unix times)."""

    started: float = 0.0
    paused: float = 0.0
    resumed: float = 0.0
    killed: float = 0.0
    restarted: float = 0.0
    partial_after_pause_s: float = 0.0
    reached_after_resume_s: float = 0.0
    down_after_kill_s: float = 0.0
    fleet_whole_after_restart_s: float = 0.0
    during: RateProbe | None = None
    after: RateProbe | None = None
    flood: dict[str, int] = field(default_factory=dict)
    flood_failed: list[tuple[float, str]] = field(default_factory=list)
    requests: list[dict[tuple[str, str, str], float]] = field(default_factory=list)
    """gateway_requests_total of each replica at the end."""
    totals: dict[str, int] = field(default_factory=dict)
    watch: AlertWatch | None = None


def partial(replicas: Replicas, replica: int) -> bool:
    """Replica `replica`'s /api/fleet says its view is partial."""
    return bool(replicas.fleet_document(replica)["state_store"]["partial"])


def store_up(replicas: Replicas, replica: int) -> float:
    """gateway_state_store_up on replica `replica`'s own /metrics."""
    port = replicas.stack.gateway_ports[replica].metrics
    status, body = http_get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert status == 200
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "gateway_state_store_up":
                return sample.value
    raise AssertionError("no gateway_state_store_up on the gateway's /metrics")


def seconds_until(what: str, probe: Any, timeout: float) -> float:
    """Seconds until probe() holds (poll every 0.2 s)."""
    started = time.monotonic()
    poll(what, probe, timeout=timeout, every=0.2)
    return time.monotonic() - started


def stored_instances(replicas: Replicas) -> set[str]:
    """The agents with a fleet row in Redis (gateway/state_redis.py: `fleet` hash, one
    field [tenant, service, instance] per agent)."""
    with Redis.from_url(replicas.redis.url, socket_timeout=5) as client:
        return {json.loads(name)[2] for name in client.hkeys(f"{PREFIX}fleet")}


def every_agent_up_and_whole(replicas: Replicas) -> bool:
    """Both replicas: the view not partial, every agent listed up."""
    expected = {agent.instance for agent in replicas.agents.values()}
    for replica in (0, 1):
        if partial(replicas, replica):
            return False
        fleet = replicas.fleet(replica)
        if {i for i, row in fleet.items() if row["status"] == "up"} < expected:
            return False
    return True


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Replicas, Outage]]:
    """The stack, its agents and flood, through the outage: Redis stopped for 30 s,
    resumed, killed, restarted empty; then the agents stop counting."""
    run_dir = tmp_path_factory.mktemp("store-faults")
    stop_file = run_dir / "agents-stop"
    rate_limit = {"rate_limit_requests_per_second": RATE, "rate_limit_burst": BURST}
    happened = Outage(started=time.time())
    # Twice the flood's rate: every export of it should be accepted.
    settings = {"GATEWAY_RATE_LIMIT_REQUESTS_PER_SECOND": str(4 * FLOOD_RATE)}
    with replica_stack(
        run_dir, rate_limit, settings, alertmanager=False, tenants=[FLOOD_TENANT]
    ) as replicas:
        for name, replica in (("a-0", 0), ("b-0", 0), ("a-1", 1), ("b-1", 1)):
            extra = {STOP_FILE_ENV: str(stop_file)}
            replicas.start_agent(name, replica, EXPORT_INTERVAL_MS, extra=extra)
        replicas.wait_announced()
        _wait_every_agent_known(replicas)
        ports = replicas.stack.gateway_ports
        floods = [Flood(p.grpc, replicas.keys[FLOOD_TENANT], 8, FLOOD_RATE) for p in ports]
        with AlertWatch(replicas) as watch, floods[0], floods[1]:
            happened.watch = watch
            _fault(replicas, happened)
            happened.after = probe_rate_limit(replicas, PROBES, PROBE_GAP_S, to=(0,))
            stop_file.touch()
            for agent in replicas.agents.values():
                happened.totals[agent.instance] = poll(
                    f"{agent.name} prints its final total",
                    lambda agent=agent: announced(agent.process, "records"),  # type: ignore[misc]
                    timeout=30,
                )
            _wait_exact_totals(replicas, happened.totals)
        for flood in floods:
            for status, count in flood.statuses.items():
                happened.flood[status] = happened.flood.get(status, 0) + count
            happened.flood_failed += flood.failed_at
        happened.requests = [gateway_requests(f"http://127.0.0.1:{p.metrics}") for p in ports]
        yield replicas, happened


def _wait_every_agent_known(replicas: Replicas) -> None:
    """Until both replicas list every agent up and Prometheus's liveness rule knows each:
    from then on a wrong silence would page."""
    poll("both replicas list every agent up", lambda: every_agent_up_and_whole(replicas), 90)
    rule = "tenant_service_instance:connector_last_seen_age_seconds"
    expected = {agent.instance for agent in replicas.agents.values()}

    def known() -> bool:
        series = replicas.stack.query(f'{rule}{{tenant_id="{AGENT_TENANT}"}}')
        return {s["metric"]["instance"] for s in series} >= expected

    poll("Prometheus's liveness rule knows every agent", known, timeout=90)


def _fault(replicas: Replicas, happened: Outage) -> None:
    redis = replicas.redis
    both = (0, 1)
    happened.paused = time.time()
    redis.pause()
    try:
        happened.partial_after_pause_s = seconds_until(
            "both replicas say the view is partial",
            lambda: all(partial(replicas, r) for r in both),
            timeout=20,
        )
        # The fallback: replica 0 alone admits its share of the tenant's limit.
        happened.during = probe_rate_limit(replicas, PROBES, PROBE_GAP_S, to=(0,))
        time.sleep(max(0.0, happened.paused + PAUSE_S - time.time()))  # the fault itself
    finally:
        redis.resume()
    happened.resumed = time.time()
    happened.reached_after_resume_s = seconds_until(
        "both replicas reach the store again after SIGCONT",
        lambda: all(store_up(replicas, r) == 1 for r in both),
        timeout=30,
    )
    happened.killed = time.time()
    redis.stop()  # SIGKILL
    happened.down_after_kill_s = seconds_until(
        "both replicas see the killed store",
        lambda: all(store_up(replicas, r) == 0 for r in both),
        timeout=30,
    )
    redis.start()  # on its port, empty
    happened.restarted = time.time()
    expected = {agent.instance for agent in replicas.agents.values()}
    happened.fleet_whole_after_restart_s = seconds_until(
        "both replicas whole again, every agent up, and the emptied store refilled",
        lambda: every_agent_up_and_whole(replicas) and stored_instances(replicas) >= expected,
        timeout=WHOLE_WITHIN_S,
    )


def _wait_exact_totals(replicas: Replicas, totals: dict[str, int]) -> None:
    def exact() -> bool:
        return all(
            sum(float(s["value"][1]) for s in replicas.records(instance)) == total
            for instance, total in totals.items()
        )

    poll(
        lambda: f"Prometheus shows every agent's exact total {totals}",
        exact,
        timeout=60,
    )


def test_no_count_is_lost_and_every_agent_export_is_accepted(
    outage: tuple[Replicas, Outage],
) -> None:
    replicas, happened = outage
    agents = [
        {outcome: value for (tenant, _, outcome), value in counts.items() if tenant == AGENT_TENANT}
        for counts in happened.requests
    ]
    print(
        f"\n[store faults] totals {sorted(happened.totals.values())} exact in Prometheus; "
        f"the agents' exports per replica {agents}; flood {happened.flood}; "
        f"{time.time() - happened.started:.0f} s so far"
    )
    for instance, total in happened.totals.items():
        series = replicas.records(instance)
        assert len(series) == 1, series  # one series per agent, never split by replica
        # It counted through the whole outage (200 records/s).
        before = replicas.stack.query(
            f'connector_records_sent_total{{instance="{instance}"}}', at=happened.paused
        )
        assert sum(float(s["value"][1]) for s in before) < total - 200 * PAUSE_S, (before, total)
    for outcomes in agents:
        assert set(outcomes) == {"accepted"}, outcomes
        assert outcomes["accepted"] >= 4 * PAUSE_S / 2, outcomes  # 2 agents, 1 export/s
    # The flood: see the next test.


def test_no_flood_export_is_refused_at_half_its_rate_limit(
    outage: tuple[Replicas, Outage],
) -> None:
    _, happened = outage
    events = {
        name: getattr(happened, name) for name in ("paused", "resumed", "killed", "restarted")
    }
    refused = [
        (status, {name: round(at - when, 1) for name, when in events.items()})
        for at, status in sorted(happened.flood_failed)
    ]
    print(f"\n[store faults] flood refusals, seconds after each event: {refused[:3]} ...")
    assert set(happened.flood) == {"OK"}, (happened.flood, refused)


def test_no_agent_alert_while_each_gateway_says_the_store_is_down(
    outage: tuple[Replicas, Outage],
) -> None:
    replicas, happened = outage
    watch = happened.watch
    assert watch is not None
    assert watch.looks >= PAUSE_S, watch.looks
    assert watch.agent_alerts == []
    # Every evaluation of the run, read back from Prometheus's TSDB.
    window = f"{time.time() - happened.started:.0f}s"
    assert replicas.stack.query(f"count_over_time({AGENTS_PAGED}[{window}])") == []
    # Each gateway said the store was down; the alert was pending, not yet firing.
    down = replicas.stack.query(f'min_over_time(gateway_state_store_up{{job="gateway"}}[{window}])')
    assert len(down) == 2, down
    assert all(float(s["value"][1]) == 0 for s in down), down
    states = {(alert["instance"], alert["alertstate"]) for alert in watch.store_alerts}
    instances = {s["metric"]["instance"] for s in down}
    assert {instance for instance, _ in states} == instances, states
    assert {state for _, state in states} == {"pending"}, states
    print(f"\n[store faults] {watch.looks} looks at ALERTS: no agent alert; store alerts {states}")


def test_the_fleet_and_the_limits_are_whole_again_within_seconds(
    outage: tuple[Replicas, Outage],
) -> None:
    _, happened = outage
    during, after = happened.during, happened.after
    assert during is not None
    assert after is not None
    share = BURST // 2 + RATE / 2 * during.seconds
    budget = BURST + RATE * after.seconds
    # The second half of the probe after the restart: the tenant's steady rate, past
    # what the first seconds spend (tokens leased before the outage, the new bucket's
    # burst): one budget's rate, where the share would admit half and two budgets twice.
    half = after.seconds / 2
    steady = after.admitted_between(half, after.seconds)
    print(
        f"\n[store faults] partial {happened.partial_after_pause_s:.1f} s after SIGSTOP; "
        f"store reached {happened.reached_after_resume_s:.1f} s after SIGCONT; "
        f"killed seen in {happened.down_after_kill_s:.1f} s; fleet whole "
        f"{happened.fleet_whole_after_restart_s:.1f} s after the restart (store refilled); "
        f"one replica "
        f"admitted {during.admitted[0]} of {PROBES} while stopped (share {share:.1f}), "
        f"{after.admitted[0]} after (one budget {budget:.1f}), of which {steady} in the "
        f"last {half:.1f} s (the rate {RATE * half:.1f})"
    )
    assert during.other == []
    assert after.other == []
    assert happened.fleet_whole_after_restart_s <= WHOLE_WITHIN_S
    # Stopped: the replica held the tenant to its share, the setting / 2.
    assert abs(during.admitted[0] - share) <= 0.15 * share + 1, (during, share)
    # Back: the global rate again, in full and never more.
    assert 0.7 * RATE * half <= steady <= 1.3 * RATE * half + 1, (after, half)
