"""Requests per second per tenant: one token bucket each.

A bucket holds up to `rate_limit_burst` tokens and refills at
`rate_limit_requests_per_second`; every request takes one. An empty bucket
answers with the delay after which a retry will find a token, kept to a few
whole seconds: the OpenTelemetry Python exporter drops a batch whose retry
delay outruns its 10 s export budget, and HTTP's Retry-After is whole seconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.errors import RateLimited

MIN_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 5.0
API_READS_PER_SECOND = 4.0
API_READS_BURST = 20
"""Calls a tenant's key may make to each read API (/api/fleet, /api/usage) per second
and in a row, per gateway process: a call costs the event loop about 20 ms for a
tenant of 1,000 agents, so one key polling in a loop takes at most a tenth of it;
/status makes one call of each every 10 s (an admin key is not limited)."""


def too_often(path: str, wait: float) -> RateLimited:
    """The refusal of a tenant's read over API_READS_BURST calls in a row."""
    return RateLimited(
        f"over {API_READS_BURST} calls in a row to {path} (a tenant's key may make "
        f"{API_READS_PER_SECOND:g} per second): retry in {wait:.0f} s",
        wait,
    )


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets by tenant id; memory grows with the number of tenants only."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, tenant_id: str, per_second: float, burst: int) -> float | None:
        """Take one token: None when allowed, else the seconds to wait before retrying."""
        if per_second <= 0:  # limit off
            return None
        now = self._clock()
        bucket = self._buckets.get(tenant_id)
        if bucket is None:
            bucket = self._buckets[tenant_id] = _Bucket(float(burst), now)
        # Limits may change on reload: refill against the current rate and size.
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.updated) * per_second)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        wait = math.ceil((1.0 - bucket.tokens) / per_second)
        return min(MAX_RETRY_SECONDS, max(MIN_RETRY_SECONDS, float(wait)))


@dataclass
class Lease:
    """One tenant's share of its global budget in this process (LeasedRateLimiter)."""

    per_second: float
    burst: int
    pool: float = 0.0
    """Tokens leased from the store, not yet spent."""
    leased: bool = False
    """The store has answered for this tenant since it was last reachable."""
    asked: int = 0
    """Requests since the last exchange (spent or refused): the demand."""
    debt: int = 0
    """Requests admitted on the fallback share since the last exchange."""
    outage_debt: int = 0
    """Of those, the ones admitted while the store was unreachable: they use up what
    the global bucket refilled meanwhile, never more (gateway.state_redis, LEASE)."""
    demand: float = 0.0
    """Requests per second, smoothed over exchanges."""
    idle: int = 0
    """Exchanges in a row without a request."""
    short: bool = False
    """The last lease got less than it asked for: the global budget is spent."""


class LeasedRateLimiter(RateLimiter):
    """Token buckets whose tokens come from one global bucket per tenant in a shared
    store (gateway.state_redis), leased in batches: a request takes a local token and
    never waits for the store. Before the first lease, while the store is
    unreachable, and past a lease the budget could have made larger, a tenant gets
    its share: the setting ÷ the last known number of replicas. What it takes so is
    owed to the global bucket and taken from it at the next exchange, so that all
    the processes together admit what one bucket would (over a few exchanges)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.leases: dict[str, Lease] = {}
        self.connected = False
        """The store answered the last exchange."""
        self.replicas = 1
        """The last known number of processes sharing the budgets."""
        self._wanted_at: float | None = None
        self.interval = 1.0
        """Seconds between exchanges (as `wanted` was last told)."""

    def take(self, tenant_id: str, per_second: float, burst: int) -> float | None:
        """Take one token: None when allowed, else the seconds to wait before retrying."""
        if per_second <= 0:
            return None
        lease = self.leases.get(tenant_id)
        if lease is None:
            lease = self.leases[tenant_id] = Lease(per_second, burst)
        lease.per_second, lease.burst = per_second, burst
        lease.asked += 1
        share = max(1, self.replicas)
        if self.connected and lease.leased:
            if lease.pool >= 1.0:
                lease.pool -= 1.0
                return None
            if lease.short:
                # The global bucket was empty at the last exchange. What refills it
                # until the next is this process's share of the rate over an exchange,
                # owed to the bucket (refusing until the next lease refused requests
                # the rate allowed: a second of refusals when the store came back).
                refill = max(1, min(burst // share, int(per_second / share * self.interval)))
                wait_refill = super().take(tenant_id, per_second / share, refill)
                if wait_refill is None:
                    lease.debt += 1
                return wait_refill
        # No lease yet, no store, or the demand outgrew a lease the budget could have
        # given more: the share, owed to the global bucket.
        wait_share = super().take(tenant_id, per_second / share, max(1, burst // share))
        if wait_share is None:
            lease.debt += 1
            lease.outage_debt += 0 if self.connected else 1
        return wait_share

    def wanted(self, interval: float) -> dict[str, tuple[Lease, int]]:
        """Per active tenant: its lease and the tokens to ask for, enough for two
        exchanges at its recent demand (and forget tenants idle for a minute)."""
        # The demand is over the time since the last look: after exchanges that failed
        # (the store away), one interval would count an outage's requests as a second's
        # and lease the whole burst, leaving the other processes short.
        now = self._clock()
        self.interval = interval
        elapsed = interval if self._wanted_at is None else max(interval, now - self._wanted_at)
        self._wanted_at = now
        wanted: dict[str, tuple[Lease, int]] = {}
        for tenant_id, lease in list(self.leases.items()):
            asked = lease.asked
            lease.demand = 0.5 * lease.demand + 0.5 * asked / elapsed
            lease.idle = 0 if asked else lease.idle + 1
            lease.asked = 0
            if lease.idle * interval > 60.0 and not lease.debt:
                del self.leases[tenant_id]
                continue
            demand = max(lease.demand, asked / elapsed)  # rising demand: the latest
            target = min(float(lease.burst), max(1.0, math.ceil(2 * demand * interval)))
            wanted[tenant_id] = (lease, max(0, math.ceil(target - lease.pool)))
        return wanted
