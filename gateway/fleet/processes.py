"""The processes a fleet row has heard, from which its clash mark follows (gateway.fleet.table).

A process keeps its host.name and, per cumulative series, the series' start time
(`start_time_unix_nano`) for its whole life. A row keeps the few most recently seen
(host, series, start) with when each was first and last seen. Gateway replicas that
share a store merge their lists (the union: the earliest first sighting, the latest
last one; gateway.state_redis does the same in Redis), so the row knows every process
whichever replica its exports reach.

Two processes of one series clash when the older was seen again after the newer
appeared (A, B, A): a restart never goes back to its old start time (A, B, B), and
an agent moving between replicas is one process (one host, one start) on each.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from gateway.fleet.resource import MAX_VALUE_CHARS

Process = tuple[str, str, str, float, float]
"""host, series (resource.series_starts; "" for an export without cumulative series), start
time (decimal nanoseconds, a string: Redis's Lua numbers would round it), first
seen, last seen (Unix seconds)."""

MAX_PROCESSES = 8
"""Processes a row keeps (the most recently seen): two processes' two series each,
or four processes' one; a client whose start times move at each export (delta
temporality) keeps no more."""
SERIES_PER_EXPORT = 2
"""Series of an export whose start times a row keeps (of the first few read)."""


def heard(
    processes: list[Process], host: str, starts: Sequence[tuple[str, int]], now: float
) -> tuple[list[Process], bool]:
    """`processes` with one export's: its host with each series' start time, or with
    none when it has no cumulative series (it is then told apart by host only); and
    False when it came from the process heard last (nothing new can alternate)."""
    host = host[:MAX_VALUE_CHARS]
    keys = sorted((host, series, str(start)) for series, start in starts[:SERIES_PER_EXPORT])
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
    the MAX_PROCESSES most recently seen kept (the same in any order of merging)."""
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
    """When two processes of one series were last both seen after alternating (0.0
    if never), and the hosts of the alternations within `window` before that."""
    by_series: dict[str, list[Process]] = {}
    for process in processes:
        by_series.setdefault(process[1], []).append(process)
    if len(by_series) == len(processes):
        return 0.0, []  # one process per series (the common case): nothing alternates
    pairs: list[tuple[float, str, str]] = []
    for group in by_series.values():
        if len(group) < 2:
            continue
        group.sort(key=lambda p: p[3])
        for i, older in enumerate(group):
            for newer in group[i + 1 :]:
                if older[3] < newer[3] < older[4]:  # the older one came back
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
        ):
            found.append((host[:MAX_VALUE_CHARS], series[:8], start[:24], first, last))
    if len(found) <= MAX_PROCESSES and len({p[:3] for p in found}) == len(found):
        return found  # as written (by `union`): the common case
    return union(found)
