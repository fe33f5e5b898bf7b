"""Each tenant's usage: what /api/usage and the /status page show it.

    chain (every finished request) ─┐
    ingest (points forwarded, dropped) ─┴─▶ Usage: per tenant, a ring of per-second
                                            and a ring of per-minute buckets
                 other processes' counts (gateway.state_redis) ─▶ Usage.others

Counting is a few dict updates in this process, never a call to the state store.
Buckets are numbered by wall-clock second and minute, so the processes sharing a
store number them alike: each publishes `recent()` (its rates and current minute)
every few seconds and `completed()` (its other minutes of the hour) once a minute,
and sums the others' with `merge_others`; with no store, `others` stays empty and
the answer is this process's own.

Per tenant and minute: `requests` (finished requests counted under the tenant),
`accepted`, `points` (data points forwarded), a refusal count per reason id
(counted as `gateway_rejections_total` counts: a request refused whole, or a
request that had points dropped for that reason) and `dropped:<reason>` (points
dropped from a request for a reason that drops points). Per second: `requests` and `points`.
Requests refused before authentication belong to no tenant and are not here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import REASONS

RATE_WINDOW_SECONDS = 10
"""Requests/s and points/s are averaged over this many complete seconds."""
HOUR_MINUTES = 60
"""The last hour: the current minute and the 59 before it."""

Counts = dict[str, int]


class _Ring:
    """`size` buckets of counts, one per period (second or minute): period n lives
    in slot n % size until period n + size takes the slot."""

    __slots__ = ("counts", "periods")

    def __init__(self, size: int) -> None:
        self.periods = [-1] * size
        self.counts: list[Counts] = [{} for _ in range(size)]

    def at(self, period: int) -> Counts:
        """The bucket of `period`, emptied first if the slot held an older one."""
        slot = period % len(self.periods)
        if self.periods[slot] != period:
            self.periods[slot] = period
            self.counts[slot] = {}
        return self.counts[slot]

    def since(self, first: int, last: int) -> Iterable[tuple[int, Counts]]:
        """The non-empty buckets of periods `first` to `last` (inclusive)."""
        for period, counts in zip(self.periods, self.counts, strict=True):
            if first <= period <= last and counts:
                yield period, counts


def _add(into: Counts, counts: Mapping[str, int]) -> None:
    for name, count in counts.items():
        into[name] = into.get(name, 0) + count


@dataclass
class Others:
    """One tenant's counts in the other processes sharing the store."""

    window: Counts = field(default_factory=dict)
    """Requests and points of the last `RATE_WINDOW_SECONDS` (live processes only)."""
    minutes: dict[int, Counts] = field(default_factory=dict)
    """Per minute of the last hour (every process, also one that has since left)."""


class Usage:
    """Per tenant: requests, points and refusals in per-second and per-minute rings."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._seconds: dict[str, _Ring] = {}
        self._minutes: dict[str, _Ring] = {}
        self.others: dict[str, Others] = {}
        """Per tenant, the other processes' counts (gateway.state_redis sets it)."""
        self._others_at = 0.0

    def _buckets(self, tenant_id: str) -> tuple[Counts, Counts]:
        now = self.clock()
        seconds = self._seconds.get(tenant_id)
        if seconds is None:
            seconds = self._seconds[tenant_id] = _Ring(RATE_WINDOW_SECONDS + 1)
            self._minutes[tenant_id] = _Ring(HOUR_MINUTES)
        return seconds.at(int(now)), self._minutes[tenant_id].at(int(now // 60))

    def request(self, tenant_id: str, refusal: str | None) -> None:
        """One finished request of `tenant_id`: accepted, or refused for `refusal`."""
        second, minute = self._buckets(tenant_id)
        second["requests"] = second.get("requests", 0) + 1
        minute["requests"] = minute.get("requests", 0) + 1
        key = "accepted" if refusal is None else refusal
        minute[key] = minute.get(key, 0) + 1

    def forwarded(self, tenant_id: str, points: int) -> None:
        """`points` data points of `tenant_id` went to the Collector."""
        second, minute = self._buckets(tenant_id)
        second["points"] = second.get("points", 0) + points
        minute["points"] = minute.get("points", 0) + points

    def dropped(self, tenant_id: str, reason: str, points: int) -> None:
        """One request of `tenant_id` had `points` points dropped for `reason`."""
        _, minute = self._buckets(tenant_id)
        minute[reason] = minute.get(reason, 0) + 1
        key = f"dropped:{reason}"
        minute[key] = minute.get(key, 0) + points

    # -- what is read -------------------------------------------------------------------

    def _periods(self) -> tuple[int, int]:
        now = self.clock()
        return int(now), int(now // 60)

    def _local(self, tenant_id: str) -> tuple[Counts, dict[int, Counts]]:
        second, minute = self._periods()
        window: Counts = {}
        seconds = self._seconds.get(tenant_id)
        if seconds is not None:
            for _, counts in seconds.since(second - RATE_WINDOW_SECONDS, second - 1):
                _add(window, counts)
        ring = self._minutes.get(tenant_id)
        minutes: dict[int, Counts] = {}
        if ring is not None:
            minutes = dict(ring.since(minute - HOUR_MINUTES + 1, minute))
        return window, minutes

    def recent(self) -> dict[str, dict[str, Any]]:
        """For the other processes, what changes every second, per tenant: `window`
        (the counts of the last complete seconds), `minute` (the current minute's
        number) and `counts` (its counts so far). Tenants with nothing in the last
        hour are forgotten here."""
        recent: dict[str, dict[str, Any]] = {}
        _, current = self._periods()
        for tenant_id in list(self._minutes):
            window, minutes = self._local(tenant_id)
            if not minutes and not window:
                del self._minutes[tenant_id], self._seconds[tenant_id]
            elif window or current in minutes:
                recent[tenant_id] = {
                    "window": window,
                    "minute": current,
                    "counts": minutes.get(current, {}),
                }
        return recent

    def completed(self) -> dict[str, dict[str, Counts]]:
        """For the other processes, what changes once a minute: per tenant, the counts
        of each completed minute of the last hour (by minute number)."""
        _, current = self._periods()
        completed: dict[str, dict[str, Counts]] = {}
        for tenant_id in self._minutes:
            _, minutes = self._local(tenant_id)
            done = {str(m): counts for m, counts in sorted(minutes.items()) if m != current}
            if done:
                completed[tenant_id] = done
        return completed

    def merge_others(
        self, published: Iterable[tuple[Mapping[str, Any], Mapping[str, Any], bool]]
    ) -> None:
        """Replace `others` with the sum of the other processes' counts: for each,
        its `recent()`, its `completed()` and whether it is live (a process that left
        sends nothing now: its rates no longer count)."""
        _, current = self._periods()
        horizon = current - HOUR_MINUTES
        others: dict[str, Others] = {}
        for recent, completed, live in published:
            for tenant_id, minutes in completed.items():
                into = others.setdefault(tenant_id, Others())
                for number, counts in minutes.items():
                    if int(number) > horizon:
                        _add(into.minutes.setdefault(int(number), {}), counts)
            for tenant_id, now in recent.items():
                into = others.setdefault(tenant_id, Others())
                if live:
                    _add(into.window, now.get("window", {}))
                number = int(now.get("minute", 0))
                # A minute is taken once: from `completed` when it is there already.
                if number > horizon and str(number) not in completed.get(tenant_id, {}):
                    _add(into.minutes.setdefault(number, {}), now.get("counts", {}))
        self.others = others
        self._others_at = self.clock()

    def expired(self, recent: Mapping[str, Any], completed: Mapping[str, Any]) -> bool:
        """Whether a process's `recent()` and `completed()` hold nothing of the last hour."""
        _, current = self._periods()
        horizon = current - HOUR_MINUTES
        minutes = [int(now.get("minute", 0)) for now in recent.values()]
        minutes += [int(m) for done in completed.values() for m in done]
        return all(m <= horizon for m in minutes)

    def tenants(self) -> set[str]:
        """Every tenant with counts here or in another process."""
        return set(self._minutes) | set(self.others)

    def of(self, tenant_id: str) -> dict[str, Any]:
        """`tenant_id`'s rates and last hour, here and in the other processes."""
        window, minutes = self._local(tenant_id)
        hour: Counts = {}
        for counts in minutes.values():
            _add(hour, counts)
        other = self.others.get(tenant_id)
        if other is not None:
            if self.clock() - self._others_at <= RATE_WINDOW_SECONDS:
                _add(window, other.window)  # older is no rate of the last seconds
            _, minute = self._periods()
            for number, counts in other.minutes.items():
                if number > minute - HOUR_MINUTES:
                    _add(hour, counts)
        requests, accepted = hour.get("requests", 0), hour.get("accepted", 0)
        return {
            "requests_per_second": round(window.get("requests", 0) / RATE_WINDOW_SECONDS, 3),
            "data_points_per_second": round(window.get("points", 0) / RATE_WINDOW_SECONDS, 3),
            "last_hour": {
                "requests": requests,
                "accepted": accepted,
                "refused": requests - accepted,
                "data_points": hour.get("points", 0),
                "refusals": {r: hour[r] for r in REASONS if hour.get(r)},
                "dropped_data_points": {
                    r: hour[f"dropped:{r}"] for r in REASONS if hour.get(f"dropped:{r}")
                },
            },
        }
