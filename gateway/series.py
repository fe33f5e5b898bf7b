"""Active series per tenant, for the `max_active_series` limit.

A series is one metric name + its data point attributes + the resource's
`service.name` and `service.instance.id` (what becomes one Prometheus series
apart from the tenant). It is active while it was seen within the window.

Memory is bounded: a tenant holds at most `max_active_series` entries (an int
hash and a timestamp each, ~100 bytes), and the tenants are the ones in the
tenants file. Entries are kept in least-recently-seen order, so expiring the
stale ones is popping from the front: no scan of the whole table, ever.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from operator import itemgetter


def attributes_hash(attributes: Iterable[tuple[str, object]]) -> int:
    """A hash of a data point's (key, value) pairs, in any order.

    Python's str hash is keyed per process (SipHash), so a client cannot craft
    collisions; an accidental one merely lets one extra series through.
    """
    # Sorted by key only: values may be str or bytes, which do not compare.
    return hash(tuple(sorted(attributes, key=itemgetter(0))))


def series_key(metric_name: str, attributes: int, service: tuple[str, str]) -> int:
    """A hash identifying one series: its metric, its `attributes_hash`, its agent."""
    return hash((metric_name, service, attributes))


class ActiveSeries:
    """The series each tenant sent within the last `window_seconds`."""

    def __init__(self, window_seconds: float) -> None:
        self.window_seconds = window_seconds
        self._seen: dict[str, OrderedDict[int, float]] = {}
        self.others: dict[str, int] = {}
        """Per tenant, its active series in the other processes sharing a state store
        (gateway.state); they count against its limit here."""
        self.replicas = 0
        """With a shared store that cannot be reached: the last known number of
        processes, each of which holds a tenant to its limit ÷ that number."""

    def of(self, tenant_id: str) -> OrderedDict[int, float]:
        """The series of `tenant_id`, least recently seen first (the request path
        refreshes a known one in place: `seen[key] = now; seen.move_to_end(key)`)."""
        seen = self._seen.get(tenant_id)
        if seen is None:
            seen = self._seen[tenant_id] = OrderedDict()
        return seen

    def admit(self, tenant_id: str, key: int, limit: int, now: float) -> bool:
        """Record that `key` was seen now; False when it is new and the tenant is at `limit`."""
        seen = self._seen.get(tenant_id)
        if seen is None:
            seen = self._seen[tenant_id] = OrderedDict()
        if key in seen:
            seen[key] = now
            seen.move_to_end(key)
            return True
        if limit:
            limit = self.local_limit(tenant_id, limit)
            if len(seen) >= limit:
                self._expire(seen, now)
                if len(seen) >= limit:
                    return False
        seen[key] = now
        return True

    def local_limit(self, tenant_id: str, limit: int) -> int:
        """What this process may hold of a tenant whose limit is `limit`."""
        if self.replicas:
            return limit // self.replicas
        return limit - self.others.get(tenant_id, 0)

    def count(self, tenant_id: str, now: float) -> int:
        """Active series of `tenant_id` now."""
        seen = self._seen.get(tenant_id)
        if seen is None:
            return 0
        self._expire(seen, now)
        return len(seen)

    def counts(self, now: float) -> dict[str, int]:
        """Active series of every tenant that has any (and forget those that have none)."""
        counts = {tenant: self.count(tenant, now) for tenant in list(self._seen)}
        for tenant, count in counts.items():
            if count == 0:
                del self._seen[tenant]
        return {tenant: count for tenant, count in counts.items() if count}

    def _expire(self, seen: OrderedDict[int, float], now: float) -> None:
        horizon = now - self.window_seconds
        while seen:
            oldest = next(iter(seen.values()))
            if oldest >= horizon:
                break
            seen.popitem(last=False)
