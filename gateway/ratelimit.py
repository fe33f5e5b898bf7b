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

MIN_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 5.0


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
