"""The pieces of the shared state that need no store: merging fleet rows, leasing rates."""

from __future__ import annotations

from dataclasses import replace

import pytest
from pydantic import ValidationError

from gateway.fleet import Sighting, merged
from gateway.ratelimit import LeasedRateLimiter
from gateway.series import ActiveSeries
from gateway.settings import GatewaySettings


def row(**changes: object) -> Sighting:
    base = Sighting("acme", "connector", "billing", "c-1", "1.0", 100.0, 200.0)
    base.silence_from, base.state_since = 200.0, 100.0
    return replace(base, **changes)  # type: ignore[arg-type]


def test_a_merge_keeps_the_latest_sighting_and_the_latest_state_change_in_any_order() -> None:
    heard_later = row(last_seen=300.0, silence_from=300.0, version="1.1", seen_by="b")
    retired_meanwhile = row(state="retired", state_since=250.0, seen_by="a")
    for one, two in ((heard_later, retired_meanwhile), (retired_meanwhile, heard_later)):
        result = merged(one, two)
        assert (result.last_seen, result.silence_from, result.version) == (300.0, 300.0, "1.1")
        assert (result.state, result.state_since, result.seen_by) == ("retired", 250.0, "b")
    # An export after the retirement puts it back to running.
    back = row(last_seen=400.0, silence_from=400.0, state_since=400.0)
    assert merged(retired_meanwhile, back).state == "running"
    assert merged(row(first_seen=50.0), row()).first_seen == 50.0


def test_without_a_lease_a_tenant_gets_its_share_and_owes_what_it_took() -> None:
    now = [0.0]
    rate = LeasedRateLimiter(clock=lambda: now[0])
    rate.replicas = 2
    taken = [rate.take("acme", 2.0, 10) is None for _ in range(7)]
    assert taken == [True] * 5 + [False] * 2  # burst 10 / 2 replicas
    assert rate.leases["acme"].debt == 5
    wanted = rate.wanted(1.0)
    assert (
        wanted["acme"][1] == 10
    )  # 7 asked in the last second: two exchanges' worth, at most the burst


def test_past_a_full_lease_a_tenant_spends_its_share_and_owes_it() -> None:
    rate = LeasedRateLimiter(clock=lambda: 0.0)
    rate.connected, rate.replicas = True, 2
    rate.take("acme", 2.0, 10)  # before any lease: the share (1 of its 5)
    lease = rate.leases["acme"]
    lease.leased, lease.pool, lease.debt = True, 2.0, 0
    taken = [rate.take("acme", 2.0, 10) is None for _ in range(7)]
    assert taken == [True] * 6 + [False]  # 2 leased, then the 4 left of the share
    assert (lease.pool, lease.debt) == (0.0, 4)
    # A lease the global budget could not fill: no more share, wait for the refill.
    lease.short, lease.pool = True, 1.0
    assert rate.take("acme", 2.0, 10) is None
    assert rate.take("acme", 2.0, 10) == 1.0  # retry after a second


def test_other_processes_series_count_against_the_limit_and_the_share_when_cut_off() -> None:
    series = ActiveSeries(600.0)
    series.others = {"acme": 7}
    assert [series.admit("acme", key, 10, 0.0) for key in range(4)] == [True] * 3 + [False]
    series.others, series.replicas = {}, 4  # the store unreachable, 4 replicas last known
    assert series.local_limit("acme", 10) == 2


def test_a_state_url_that_is_not_redis_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="GATEWAY_STATE_URL takes redis://"):
        GatewaySettings(state_url="http://127.0.0.1:6379")
    with pytest.raises(ValidationError, match="GATEWAY_WORKERS=3 needs GATEWAY_STATE_URL"):
        GatewaySettings(workers=3)
    assert GatewaySettings(state_url="rediss://:pw@redis:6380/0", workers=3).workers == 3
