"""Active series per tenant, for the `max_active_series` limit.

A series is one metric name + its data point attributes + the resource's
`service.name` and `service.instance.id` (what becomes one Prometheus series
apart from the tenant). It is active while it was seen within the window.

Memory is bounded: a tenant holds at most `max_active_series` entries (an int
hash and a timestamp each, ~100 bytes; with a shared store about as much again for
the series' global id), and the tenants are the ones in the
tenants file. Entries are kept in least-recently-seen order, so expiring the
stale ones is popping from the front: no scan of the whole table, ever.

With a shared state store (gateway.state_redis) each series also gets a global id,
the same in every process (`series_id`), computed once when the series is new here;
the store counts the distinct ids of all processes (HyperLogLog).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from operator import itemgetter

LATE_SECONDS = 5.0
"""A request stamps its series with its start time and may finish this much later:
the walk over a bucket that ended starts this long before the previous walk."""


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


def stable_attributes_hash(attributes: Iterable[tuple[str, object]]) -> int:
    """`attributes_hash`, but the same in every process (64 bits of BLAKE2b): slower,
    so computed only where a shared store needs it."""
    text = repr(sorted(attributes, key=itemgetter(0)))
    digest = hashlib.blake2b(text.encode("utf-8", "backslashreplace"), digest_size=8)
    return int.from_bytes(digest.digest(), "little")


def series_id(metric_name: str, attributes: int, service: tuple[str, str]) -> bytes:
    """One series' global id (8 bytes), the same in every process: its metric, its
    `stable_attributes_hash`, its agent."""
    text = "\0".join((metric_name, *service, str(attributes)))
    return hashlib.blake2b(text.encode("utf-8", "backslashreplace"), digest_size=8).digest()


@dataclass
class Pending:
    """Global ids to add to the store, per tenant and time bucket (`ActiveSeries.pending`)."""

    bucket: int
    epoch: object
    walked_at: float | None
    ids: dict[tuple[str, int], list[bytes]] = field(default_factory=dict)


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
        self.shared = False
        """Set by a shared store: keep each series' global id (`series_id`)."""
        self._ids: dict[str, dict[int, bytes]] = {}
        self._new: dict[str, list[bytes]] = {}  # since the last exchange
        self._bucket = 0
        self._walked = float("-inf")
        self._epoch: object = None

    def of(self, tenant_id: str) -> OrderedDict[int, float]:
        """The series of `tenant_id`, least recently seen first (the request path
        refreshes a known one in place: `seen[key] = now; seen.move_to_end(key)`)."""
        seen = self._seen.get(tenant_id)
        if seen is None:
            seen = self._seen[tenant_id] = OrderedDict()
        return seen

    def admit(
        self,
        tenant_id: str,
        key: int,
        limit: int,
        now: float,
        global_id: Callable[[], bytes] | None = None,
    ) -> bool:
        """Record that `key` was seen now; False when it is new and the tenant is at
        `limit`. With a shared store, a new series' `global_id()` is kept."""
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
                self._expire(tenant_id, seen, now)
                if len(seen) >= limit:
                    return False
        seen[key] = now
        if self.shared and global_id is not None:
            ids = self._ids.get(tenant_id)
            if ids is None:
                ids = self._ids[tenant_id] = {}
            ids[key] = global_id()
            new = self._new.get(tenant_id)
            if new is None:
                new = self._new[tenant_id] = []
            if len(new) < len(seen):
                new.append(ids[key])
            else:  # churn while the store is away: walk all active series next time
                self._epoch = None
        return True

    def local_limit(self, tenant_id: str, limit: int) -> int:
        """What this process may hold of a tenant whose limit is `limit`."""
        if self.replicas:
            return limit // self.replicas
        return limit - self.others.get(tenant_id, 0)

    def total(self, tenant_id: str, now: float) -> int:
        """Active series of `tenant_id` across every process sharing the store (here alone
        in memory): this process's now, plus the others' as of the last exchange."""
        return self.count(tenant_id, now) + self.others.get(tenant_id, 0)

    def count(self, tenant_id: str, now: float) -> int:
        """Active series of `tenant_id` now."""
        seen = self._seen.get(tenant_id)
        if seen is None:
            return 0
        self._expire(tenant_id, seen, now)
        return len(seen)

    def counts(self, now: float) -> dict[str, int]:
        """Active series of every tenant that has any (and forget those that have none)."""
        counts = {tenant: self.count(tenant, now) for tenant in list(self._seen)}
        for tenant, count in counts.items():
            if count == 0:
                del self._seen[tenant]
                self._ids.pop(tenant, None)
        return {tenant: count for tenant, count in counts.items() if count}

    def pending(self, now: float, bucket: int, epoch: object) -> Pending:
        """What to add to the store's time bucket `bucket`: the series new here since the
        last exchange; when a bucket has ended, every series seen in it (added to the
        one before `bucket`); when the store's contents changed (`epoch`: emptied, or
        the first exchange), every active series. So a series goes to the store once
        per bucket, and the request path never does more than remember new ones."""
        new, self._new = self._new, {}
        pending = Pending(bucket, epoch, None, {(t, bucket): ids for t, ids in new.items()})
        if epoch != self._epoch:  # the new ones are among them
            since, into, pending.ids = float("-inf"), bucket, {}
        elif bucket != self._bucket:
            since, into = self._walked - LATE_SECONDS, bucket - 1
        else:
            return pending
        pending.walked_at = now
        for tenant_id, seen in self._seen.items():
            known = self._ids.get(tenant_id)
            if not known:
                continue
            found = pending.ids.setdefault((tenant_id, into), [])
            # Most recently seen first: the walk stops at the first seen before `since`.
            for key, at in reversed(seen.items()):
                if at < since:
                    break
                if (global_id := known.get(key)) is not None:
                    found.append(global_id)
        return pending

    def added(self, pending: Pending) -> None:
        """`pending` is in the store."""
        self._bucket, self._epoch = pending.bucket, pending.epoch
        if pending.walked_at is not None:
            self._walked = pending.walked_at

    def not_added(self) -> None:
        """The exchange failed: every active series again at the next one (bounded, where
        keeping each new one until the store is back would not be)."""
        self._epoch = None

    def _expire(self, tenant_id: str, seen: OrderedDict[int, float], now: float) -> None:
        horizon = now - self.window_seconds
        ids = self._ids.get(tenant_id)
        while seen:
            oldest = next(iter(seen.values()))
            if oldest >= horizon:
                break
            key, _ = seen.popitem(last=False)
            if ids is not None:
                ids.pop(key, None)
