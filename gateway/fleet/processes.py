"""The processes a fleet row has heard, from which its clash mark follows (gateway.fleet.table).

A process keeps its host.name and, per cumulative series, the series' start time
(`start_time_unix_nano`) for its whole life. A row keeps the few most recently seen
(host, series, start) with when each was first and last seen. Gateway replicas that
share a store merge their lists (the union: the earliest first sighting, the latest
last one; gateway.state_redis does the same in Redis), so the row knows every process
whichever replica its exports reach.

Entries of two hosts, or of two start times of one series, are two processes; they
clash when the older was seen again after the newer appeared (A, B, A): a restart
never goes back to its old start time (A, B, B), a process rescheduled on another
host leaves the old one for good, and an agent moving between replicas is one
process (one host, one start) on each.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from gateway.fleet.resource import MAX_VALUE_CHARS, STARTS_PER_REQUEST

Process = tuple[str, str, str, float, float]
"""host, series (resource.series_starts; "" for an export without cumulative series), start
time (decimal nanoseconds, a string: Redis's Lua numbers would round it), first
seen, last seen (Unix seconds)."""

MAX_PROCESSES = 8
"""Processes a row keeps (the most recently seen): two processes' two series each,
or four processes' one; an agent that changes host at each export keeps no more."""


def heard(
    processes: list[Process], host: str, starts: Sequence[tuple[str, int]], now: float
) -> tuple[list[Process], bool]:
    """`processes` with one export's: its host with each series' start time, or with
    none when it has no cumulative series (it is then told apart by host only); and
    False when it came from the process heard last (nothing new can alternate)."""
    host = host[:MAX_VALUE_CHARS]
    keys = sorted((host, series, str(start)) for series, start in starts[:STARTS_PER_REQUEST])
    keys = keys or [(host, "", "")]
    count = len(keys)
    if [p[:3] for p in processes[:count]] == keys and now > processes[0][4]:
        # The process heard last, again (the common case): it stays first.
        again = [(*p[:4], now) for p in processes[:count]]
        return again + processes[count:], False
    return union(processes, [(*key, now, now) for key in keys]), True


def _order(process: Process) -> tuple[float, str, str, str]:
    return -process[4], process[0], process[1], process[2]


def union(*lists: Iterable[Process]) -> list[Process]:
    """One list from several: per process the earliest first and latest last sighting,
    the MAX_PROCESSES most recently seen kept. The same in any order of merging while
    they fit; past that, a process dropped and heard again counts as first seen then
    (it can only look newer: never a clash with a process gone before it)."""
    found: dict[tuple[str, str, str], Process] = {}
    for processes in lists:
        for process in processes:
            key = process[:3]
            known = found.get(key)
            if known is not None:
                process = (*key, min(known[3], process[3]), max(known[4], process[4]))
            found[key] = process
    return sorted(found.values(), key=_order)[:MAX_PROCESSES]


def clash(processes: list[Process], window: float) -> tuple[float, list[str]]:
    """When two processes that alternated were last both seen (0.0 if never), and the
    hosts of the alternations within `window` before that. Two entries are two
    processes when their hosts differ, or their start times of one series do."""
    if len(processes) < 2 or (
        len({p[0] for p in processes}) == 1 and len({p[1] for p in processes}) == len(processes)
    ):
        return 0.0, []  # one host, one start per series (the common case)
    ordered = sorted(processes, key=lambda p: p[3])
    pairs: list[tuple[float, str, str]] = []
    for i, older in enumerate(ordered):
        for newer in ordered[i + 1 :]:
            # One entry per (host, series, start): same host and series, another start.
            two = older[0] != newer[0] or older[1] == newer[1]
            if two and older[3] < newer[3] < older[4]:  # the older one came back
                pairs.append((min(older[4], newer[4]), older[0], newer[0]))
    if not pairs:
        return 0.0, []
    seen = max(at for at, _, _ in pairs)
    hosts = {h for at, *both in pairs if at >= seen - window for h in both}
    return seen, sorted(hosts - {""})


def cleaned(value: Any) -> list[Process]:
    """The processes of a row read back (from Redis or the state file), whatever was
    there: well-formed entries only, cut to the bounds."""
    if not isinstance(value, list):
        return []  # Redis's cjson writes an empty list as {}
    found: list[Process] = []
    for entry in value[: 2 * MAX_PROCESSES]:
        if not isinstance(entry, list | tuple) or len(entry) != 5:
            continue
        host, series, start, first, last = entry
        if (
            isinstance(host, str)
            and isinstance(series, str)
            and isinstance(start, str)
            and isinstance(first, int | float)
            and isinstance(last, int | float)
            and math.isfinite(first + last)  # Redis's cjson cannot write NaN or Infinity
        ):
            found.append((host[:MAX_VALUE_CHARS], series[:8], start[:24], first, last))
    if len(found) <= MAX_PROCESSES and len({p[:3] for p in found}) == len(found):
        return found  # as written (by `union`): the common case
    return union(found)
