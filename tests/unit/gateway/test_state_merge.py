"""The pieces of the shared state that need no store: merging fleet rows, leasing rates."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import pytest
from pydantic import ValidationError

from gateway.fleet import Sighting, merged
from gateway.ratelimit import Lease, LeasedRateLimiter
from gateway.series import ActiveSeries, series_id, stable_attributes_hash
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


def test_past_a_short_lease_a_tenant_spends_its_share_of_the_refill_and_owes_it() -> None:
    now = [0.0]
    rate = LeasedRateLimiter(clock=lambda: now[0])
    rate.connected, rate.replicas = True, 2
    rate.leases["acme"] = lease = Lease(2.0, 10, pool=1.0, leased=True, short=True)
    # The global bucket was empty at the last exchange: the lease, then what refills
    # the bucket meanwhile, 1 request/s (2/s over 2 replicas) and no burst.
    admitted = []
    for _ in range(40):  # 10 s at 4 requests/s
        admitted.append(rate.take("acme", 2.0, 10) is None)
        now[0] += 0.25
    assert admitted[:3] == [True, True, False]
    assert sum(admitted) == 11  # the leased token, then one a second
    assert (lease.pool, lease.debt) == (0.0, 10)
    assert rate.take("acme", 2.0, 10) == 1.0  # retry after a second


def test_after_an_outage_a_tenant_asks_for_its_demand_over_the_outage_not_one_exchange() -> None:
    now = [0.0]
    rate = LeasedRateLimiter(clock=lambda: now[0])
    rate.replicas = 2
    rate.take("acme", 20.0, 100)
    rate.wanted(1.0)  # the last exchange before the store went away
    for _ in range(60):  # 30 s without the store: 2 requests/s on the share
        now[0] += 0.5
        rate.take("acme", 20.0, 100)
    now[0] += 1.0
    # 2 requests/s: two exchanges' worth is 4, not the burst. Asking for the whole
    # burst would leave the other replicas a short lease, refusing at a tenth of the rate.
    assert rate.wanted(1.0)["acme"][1] == 4


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


def test_a_series_global_id_is_the_same_in_every_process() -> None:
    """Python's own hash differs per process: the id a shared store counts must not."""
    program = (
        "from gateway.series import series_id, stable_attributes_hash as h;"
        "print(series_id('m', h([('b', 'x'), ('a', b'y')]), ('svc', 'i-1')).hex(), hash('m'))"
    )
    outputs = [
        subprocess.run(
            [sys.executable, "-c", program],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        for seed in ("1", "2")
    ]
    assert outputs[0][1] != outputs[1][1]  # the process hash does differ
    assert outputs[0][0] == outputs[1][0]
    same = series_id("m", stable_attributes_hash([("a", b"y"), ("b", "x")]), ("svc", "i-1"))
    assert same.hex() == outputs[0][0]  # in any order of the attributes


def test_each_series_goes_to_the_store_once_per_bucket_and_all_again_when_it_was_emptied() -> None:
    series = ActiveSeries(600.0)
    series.shared = True

    def see(key: int, now: float) -> None:
        seen = series.of("acme")
        if key in seen:  # as the request path refreshes a known series
            seen[key] = now
            seen.move_to_end(key)
        else:
            assert series.admit("acme", key, 100, now, lambda: key.to_bytes(8, "little"))

    def look(now: float, bucket: int, epoch: str) -> dict[int, list[int]]:
        pending = series.pending(now, bucket, epoch)
        series.added(pending)
        return {
            into: sorted(int.from_bytes(i, "little") for i in ids)
            for (_, into), ids in pending.ids.items()
        }

    for key in range(3):
        see(key, 10.0)
    assert look(11.0, 1, "e1") == {1: [0, 1, 2]}  # the first exchange: every series
    see(0, 20.0)
    see(3, 20.0)
    assert look(21.0, 1, "e1") == {1: [3]}  # only the new one: 0 is in this bucket already
    assert look(35.0, 1, "e1") == {}
    see(1, 45.0)
    see(4, 46.0)
    # A new bucket: 4 (new) into it; what was seen since the last walk into the one that ended.
    assert look(50.0, 2, "e1") == {2: [4], 1: [0, 1, 2, 3, 4]}
    assert look(51.0, 2, "e1") == {}
    assert look(52.0, 2, "e2") == {2: [0, 1, 2, 3, 4]}  # the store was emptied: all again
    # A failed exchange: everything again at the next one.
    see(5, 60.0)
    series.pending(61.0, 2, "e2")
    series.not_added()
    assert look(62.0, 2, "e2") == {2: [0, 1, 2, 3, 4, 5]}
    # Series that are no longer active are forgotten with their ids.
    assert series.counts(700.0) == {}
    assert look(701.0, 3, "e2") == {}
    # New series while the store is away are remembered up to the active ones, then
    # every active one goes at the next exchange.
    for key in range(100, 300):
        see(key, 1000.0 + 10 * key)
        series.counts(1000.0 + 10 * key)  # the ones seen 600 s before expire: churn
    assert len(series.of("acme")) == 61
    assert len(series._new["acme"]) <= 62  # not the 200 seen meanwhile
    assert look(4000.0, 3, "e2") == {3: sorted(series.of("acme"))}
