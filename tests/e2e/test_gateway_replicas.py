"""Two gateway replicas sharing one Redis, end to end (docs/scaling.md, "Gateway replicas").

Two gateway processes on ports of their own share the state store of one real
`redis-server` (GATEWAY_STATE_URL) and forward to one Collector; Prometheus scrapes
both with the repository's rules, Alertmanager runs its alertmanager.yml. Real
agents (bench/fleet_agent.py connectors) export every 2 s, some to each replica:

- every agent is on both replicas' `/api/fleet`;
- one tenant's rate limit is one budget across both;
- an agent SIGKILLed behind one replica pages within 3 minutes;
- an agent that a balancer moves to the other replica (its connection cut and
  reopened elsewhere, stack/tcpproxy.py) neither pages nor shows as a clash, and
  its counts stay exact in Prometheus.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from polling import poll
from replica_fixtures import Replicas, probe_rate_limit, replica_stack

from bench.fleet_agent import BATCHES_ENV
from stack.tcpproxy import TcpProxy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

EXPORT_INTERVAL_MS = 2000
PAGE_DEADLINE_S = 180.0
QUIET_FOR_S = 170.0
"""How long after the move a false page of the moved agent would have come by: the
120 s silence threshold, a send of the last-seen series (10 s), a scrape and an
evaluation (10 s each), Alertmanager's poll."""
MOVED_BATCHES = 300
"""The moved agent counts 300 batches of 100 records (2.5 minutes), then stops
counting: its exact total is 30,000, and it is still counting when it moves."""
RATE, BURST = 2.0, 10
"""Tenant `limited`'s rate limit (requests/s and burst), the same on both replicas."""
PROBES, PROBE_GAP_S = 150, 0.1
"""Requests sent to the two replicas in turn, one every PROBE_GAP_S."""


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    """Redis, one Collector, two gateway replicas, Prometheus, Alertmanager, and four
    connectors: two behind replica 0 (one to be killed), one behind replica 1, one
    behind replica 0 through a proxy (to be moved)."""
    rate_limit = {"rate_limit_requests_per_second": RATE, "rate_limit_burst": BURST}
    with replica_stack(tmp_path_factory.mktemp("replicas"), rate_limit) as run:
        stack = run.stack
        run.proxy = proxy = TcpProxy(stack.gateway_ports[0].grpc).start()
        try:
            for name, replica in (("steady-0", 0), ("killed-0", 0), ("steady-1", 1)):
                run.start_agent(name, replica, EXPORT_INTERVAL_MS)
            extra = {BATCHES_ENV: str(MOVED_BATCHES)}
            run.start_agent("moved", 0, EXPORT_INTERVAL_MS, f"http://{proxy.address}", extra)
            run.wait_announced()
            yield run
        finally:
            proxy.close()


def test_every_agent_is_on_both_replicas_fleet(replicas: Replicas) -> None:
    expected = {agent.instance for agent in replicas.agents.values()}

    def both_list_every_agent_up() -> list[dict[str, dict[str, Any]]]:
        fleets = [replicas.fleet(0), replicas.fleet(1)]
        every_agent_up = all(
            {i for i, a in fleet.items() if a["status"] == "up"} >= expected for fleet in fleets
        )
        return fleets if every_agent_up else []

    fleets = poll("both replicas list all four agents up", both_list_every_agent_up, timeout=90)
    # The same rows on both: each agent was heard by one replica only.
    for instance in expected:
        first, second = (fleet[instance] for fleet in fleets)
        assert first["service"] == second["service"]
        assert first["first_seen"] == second["first_seen"], (first, second)
        assert not first["clash"], first
        assert not second["clash"], second

    # Both replicas count the shared table: the fleet rules count each agent once.
    def known() -> float | None:
        result = replicas.stack.query("pipeline:agents_known:count")
        return float(result[0]["value"][1]) if result else None

    poll(
        lambda: f"the fleet rules count the four agents once (they say {known()})",
        lambda: known() == 4,
        timeout=90,
    )


def test_one_tenants_rate_limit_is_one_budget_across_both_replicas(replicas: Replicas) -> None:
    probe = probe_rate_limit(replicas, PROBES, PROBE_GAP_S)
    admitted, refused, other, elapsed = probe.admitted, probe.refused, probe.other, probe.seconds
    budget = BURST + RATE * elapsed
    print(
        f"\n[replicas] rate limit {RATE:g}/s burst {BURST}: {sum(admitted)} of {PROBES} "
        f"admitted over {elapsed:.1f} s (per replica {admitted}); one budget admits "
        f"{budget:.1f}, two independent ones {2 * budget:.1f}"
    )
    assert other == [], "refused for another reason than the rate limit"
    assert abs(sum(admitted) - budget) <= 0.1 * budget, (admitted, refused, budget)
    assert min(admitted) > 0, "both replicas admit from the one budget"


@pytest.fixture(scope="module")
def events(replicas: Replicas) -> dict[str, float]:
    """Kill `killed-0`, move `moved` to replica 1, then watch Alertmanager until the kill
    has paged and a false page of the move would have come; when each happened."""
    stack = replicas.stack
    killed, moved = replicas.agents["killed-0"], replicas.agents["moved"]

    def rule_knows_every_agent() -> bool:
        rule = "tenant_service_instance:connector_last_seen_age_seconds"
        known = {s["metric"]["instance"] for s in stack.query(f'{rule}{{tenant_id="acme"}}')}
        return known >= {agent.instance for agent in replicas.agents.values()}

    poll("Prometheus's liveness rules know every agent", rule_knows_every_agent, timeout=90)
    before = replicas.records(moved.instance)
    killed.process.popen.send_signal(signal.SIGKILL)
    killed_at = time.time()
    assert replicas.proxy is not None
    replicas.proxy.move_to(stack.gateway_ports[1].grpc)
    moved_at = time.time()
    paged_at, clashes, looks = 0.0, 0, 0
    while time.time() < moved_at + QUIET_FOR_S or not paged_at:
        if time.time() > killed_at + PAGE_DEADLINE_S and not paged_at:
            break
        replicas.poll_alerts()
        pages = [s for s, name in replicas.alerts_of(killed.instance) if name == "ConnectorSilent"]
        paged_at = paged_at or (pages[0] if pages else 0.0)
        # Both replicas' view of the moved agent, every few seconds of the watch.
        if looks <= (time.time() - moved_at) / 5:
            looks += 1
            rows = [replicas.fleet(replica)[moved.instance] for replica in (0, 1)]
            clashes += sum(bool(row["clash"]) or row["status"] != "up" for row in rows)
        time.sleep(1.0)
    recorded = sum(float(s["value"][1]) for s in before)
    return {
        "killed": killed_at,
        "paged": paged_at,
        "moved": moved_at,
        "before": recorded,
        "looks": looks,
        "clash_or_not_up": clashes,
    }


def test_an_agent_killed_behind_one_replica_pages_within_3_minutes(
    replicas: Replicas, events: dict[str, float]
) -> None:
    killed = replicas.agents["killed-0"]
    assert events["paged"], f"no ConnectorSilent for {killed.instance}: {replicas.alerts_seen}"
    seconds = events["paged"] - events["killed"]
    print(f"\n[replicas] the killed agent paged {seconds:.0f} s after SIGKILL")
    assert seconds <= PAGE_DEADLINE_S
    assert [name for _, name in replicas.alerts_of(killed.instance)] == ["ConnectorSilent"]
    for replica in (0, 1):
        assert replicas.fleet(replica)[killed.instance]["status"] == "silent", replica


def test_an_agent_moved_to_the_other_replica_neither_pages_nor_clashes_and_counts_exactly(
    replicas: Replicas, events: dict[str, float]
) -> None:
    moved = replicas.agents["moved"]
    assert time.time() >= events["moved"] + QUIET_FOR_S - 1
    assert replicas.alerts_of(moved.instance) == [], replicas.alerts_of(moved.instance)
    steady = [replicas.agents[name].instance for name in ("steady-0", "steady-1")]
    for instance in steady:
        assert replicas.alerts_of(instance) == [], instance
    # It was still counting when it moved: some of its counts went through replica 1.
    total = MOVED_BATCHES * 100
    assert events["before"] < total, events
    assert replicas.proxy is not None
    assert replicas.proxy.connections >= 2, "the moved agent reconnected through the proxy"
    # Up and not clashing on both replicas at every look of the watch, and now.
    assert events["looks"] >= 20, events
    assert events["clash_or_not_up"] == 0, events
    for replica in (0, 1):
        row = replicas.fleet(replica)[moved.instance]
        assert row["status"] == "up", (replica, row)
        assert not row["clash"], (replica, row)
    clashing = replicas.stack.query(
        f'gateway_fleet_agents_clashing{{service_instance_id="{moved.instance}"}} > 0'
    )
    assert clashing == []

    def exact_total() -> list[dict[str, Any]]:
        series = replicas.records(moved.instance)
        return series if sum(float(s["value"][1]) for s in series) == total else []

    poll(
        lambda: (
            f"Prometheus shows {total} records of the moved agent, in one series "
            f"(shows {replicas.records(moved.instance)})"
        ),
        exact_total,
        timeout=60,
    )
    print(
        f"\n[replicas] the moved agent: {events['before']:.0f} records before the move, "
        f"{total} in Prometheus at the end (exact), no alert"
    )
    # Its counter never went backwards across the move.
    history = replicas.stack.query_range(
        f'connector_records_sent_total{{instance="{moved.instance}"}}',
        events["moved"] - 60,
        time.time(),
        step=5.0,
    )
    values = [float(v) for _, v in history[0]["values"]]
    assert values == sorted(values), values
    assert len(history) == 1, history
