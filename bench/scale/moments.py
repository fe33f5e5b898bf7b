"""Export latency at the pipeline's busy moments, and what those moments cost in CPU.

Where this sits: simagents' exports (start, latency, agent) and a 10 Hz CPU trace of the
pipeline's processes ──▶ *moments* ◀── each Prometheus's record of its scrapes and the
fleet series' own values ──▶ the scale benchmark's figures.

Two moments recur:
- **A Collector being scraped.** Each Prometheus keeps every scrape's start (the
  timestamp of its `scrape_duration_seconds` sample) and duration. An export "during
  its Collector's scrape" started while the Collector that stores its agent (the
  gateway's own `ShardMap`, gateway/shards.py) was being scraped.
- **The gateway publishing the fleet series** (gateway/fleet/series.py): every
  GATEWAY_FLEET_SERIES_INTERVAL_SECONDS it sends every agent's last-seen series,
  stamped with the cycle's start, so `*_last_seen_seconds` + `*_last_seen_timestamp_seconds`
  is that start. Each export is placed by its start's phase in the cycle.
  "Publishing" is the first `PUBLISHING_S` of a cycle; the profile by phase shows
  how long the gateway's CPU burst really lasts.

CPU of a moment: the process's CPU seconds inside the moments minus its rate
outside them times their length (the excess), from the trace.
"""

from __future__ import annotations

import bisect
import os
import statistics
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.procstat import cpu_seconds
from bench.scale import probe
from gateway.shards import ShardMap

FLEET_INTERVAL_S = float(os.environ.get("GATEWAY_FLEET_SERIES_INTERVAL_SECONDS", "10"))
"""The gateway's publishing interval (its default unless this environment sets it)."""
PUBLISHING_S = 2.0
"""The start of a publishing cycle counted as "publishing"."""
PHASE_BIN_S = 0.5

Interval = tuple[float, float]


@dataclass
class CpuTrace:
    """CPU seconds of some processes every `every_s`, with Unix-time stamps."""

    pids: dict[str, int]
    every_s: float = 0.1
    rows: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        """Sample in a daemon thread until `stop`."""
        threading.Thread(target=self._run, name="cpu-trace", daemon=True).start()

    def _run(self) -> None:
        while True:
            self.rows.append((time.time(), {n: cpu_seconds(p) for n, p in self.pids.items()}))
            if self._stop.wait(self.every_s):
                return

    def stop(self) -> None:
        """End the sampling."""
        self._stop.set()

    def deltas(self, name: str) -> list[tuple[float, float, float]]:
        """(start, end, CPU seconds used) of `name` between consecutive samples."""
        return [
            (t0, t1, after[name] - before[name])
            for (t0, before), (t1, after) in zip(self.rows, self.rows[1:], strict=False)
            if name in before and name in after
        ]


def _inside(t: float, intervals: Sequence[Interval], starts: Sequence[float]) -> bool:
    """Whether `t` falls in one of `intervals` (sorted by start; `starts` their starts)."""
    index = bisect.bisect_right(starts, t) - 1
    return index >= 0 and t < intervals[index][1]


def _merged(intervals: Iterable[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


class Moments:
    """Scrape intervals per target and publish starts, read after a window."""

    def __init__(self, scrapes: dict[str, list[Interval]], publish_starts: list[float]) -> None:
        # Two Prometheus shards scrape the gateway: overlapping scrapes count as one.
        self.scrapes = {a: _merged(v) for a, v in scrapes.items()}
        self._starts = {a: [s for s, _ in v] for a, v in self.scrapes.items()}
        self.publish_starts = publish_starts

    def scraped(self, address: str, t: float) -> bool:
        """Whether the target at `address` was being scraped at Unix time `t`."""
        return _inside(t, self.scrapes.get(address, []), self._starts.get(address, []))

    def phase(self, t: float) -> float | None:
        """Seconds since the latest publishing cycle started at `t` (extrapolated by the
        interval from the nearest observed start); None without an observed start."""
        if not self.publish_starts:
            return None
        index = max(0, bisect.bisect_right(self.publish_starts, t) - 1)
        return (t - self.publish_starts[index]) % FLEET_INTERVAL_S


def read_moments(
    scrapers: Iterable[str], span_s: float, last_seen_instance: str | None, at: float
) -> Moments:
    """From every Prometheus (shard) at `scrapers`: each collector and gateway scrape in
    the `span_s` before Unix time `at`, and the publish starts seen in one agent's
    last-seen series then."""
    span = f"{span_s:.0f}s"
    scrapes: dict[str, list[Interval]] = {}
    starts: set[float] = set()
    for api in scrapers:
        promql = f'scrape_duration_seconds{{job=~"collector|gateway"}}[{span}]'
        for row in probe.instant(api, promql, at):
            address = row["metric"].get("instance", "?")
            for stamp, value in row["values"]:
                scrapes.setdefault(address, []).append((float(stamp), float(stamp) + float(value)))
        if last_seen_instance is None:
            continue
        selector = (
            f'{{__name__=~"(connector|agent)_last_seen_(timestamp_)?seconds", '
            f'instance="{last_seen_instance}"}}[{span}]'
        )
        by_stamp: dict[float, float] = {}
        for row in probe.instant(api, selector, at):
            for stamp, value in row["values"]:
                by_stamp[float(stamp)] = by_stamp.get(float(stamp), 0.0) + float(value)
        starts.update(round(value, 3) for value in by_stamp.values())
    return Moments(scrapes, sorted(starts))


def _latency(values: list[float]) -> dict[str, float]:
    if not values:
        return {"exports": 0}
    ordered = sorted(values)
    last = len(ordered) - 1
    return {
        "exports": len(ordered),
        "p50_ms": ordered[last // 2] * 1e3,
        "p99_ms": ordered[round(last * 0.99)] * 1e3,
        "max_ms": ordered[-1] * 1e3,
    }


def _excess_cpu(
    deltas: list[tuple[float, float, float]], inside: Any
) -> tuple[float, float, float]:
    """(CPU s inside, s inside, CPU s above the outside rate) over `deltas`."""
    cpu_in = time_in = cpu_out = time_out = 0.0
    for t0, t1, used in deltas:
        if inside((t0 + t1) / 2):
            cpu_in, time_in = cpu_in + used, time_in + (t1 - t0)
        else:
            cpu_out, time_out = cpu_out + used, time_out + (t1 - t0)
    rate_out = cpu_out / time_out if time_out else 0.0
    return cpu_in, time_in, cpu_in - rate_out * time_in


def analyse(
    moments: Moments,
    exports: list[list[float]],
    identities: list[tuple[str, str]],
    routed: list[tuple[str, str]],
    trace: CpuTrace,
    names: dict[str, str],
    series_by_target: dict[str, float],
) -> dict[str, Any]:
    """Export latency by moment, the latency and gateway CPU by publishing phase, and
    the CPU of each Collector's scrapes per series. `names`: scrape target → component."""
    shards = ShardMap([otlp for otlp, _ in routed])
    own_target = [
        routed[shards.shard_of(f"{tenant}\x00{instance}")][1] for tenant, instance in identities
    ]
    collector_targets = [target for _, target in routed]
    gateway_targets = [a for a, n in names.items() if n == "gateway"]
    classes: dict[str, list[float]] = {
        k: [] for k in ("all", "own_scrape", "any_scrape", "gateway_scrape", "publishing", "quiet")
    }
    bins = int(FLEET_INTERVAL_S / PHASE_BIN_S)
    by_phase: list[list[float]] = [[] for _ in range(bins)]
    for start, latency, index in exports:
        classes["all"].append(latency)
        target = own_target[int(index)] if int(index) < len(own_target) else None
        own = target is not None and moments.scraped(target, start)
        anyone = any(moments.scraped(t, start) for t in collector_targets)
        gateway = any(moments.scraped(t, start) for t in gateway_targets)
        phase = moments.phase(start)
        publishing = phase is not None and phase < PUBLISHING_S
        for key, hit in (
            ("own_scrape", own),
            ("any_scrape", anyone),
            ("gateway_scrape", gateway),
            ("publishing", publishing),
            ("quiet", not (anyone or gateway or publishing)),
        ):
            if hit:
                classes[key].append(latency)
        if phase is not None:
            by_phase[min(bins - 1, int(phase / PHASE_BIN_S))].append(latency)
    result: dict[str, Any] = {
        "latency": {key: _latency(values) for key, values in classes.items()},
        "publish_starts_seen": len(moments.publish_starts),
        "fleet_interval_s": FLEET_INTERVAL_S,
        "publishing_s": PUBLISHING_S,
    }
    result["phase_profile"] = _phase_profile(moments, by_phase, trace)
    result["scrape_cpu"] = _scrape_cpu(moments, trace, names, series_by_target)
    return result


def _phase_profile(
    moments: Moments, by_phase: list[list[float]], trace: CpuTrace
) -> dict[str, Any]:
    """Per PHASE_BIN_S of the publishing cycle: export latency and the gateway's cores;
    and the gateway's CPU in the first PUBLISHING_S above its median bin's rate, per
    cycle (the cost of publishing)."""
    cpu = [0.0] * len(by_phase)
    seconds = [0.0] * len(by_phase)
    for t0, t1, used in trace.deltas("gateway"):
        phase = moments.phase((t0 + t1) / 2)
        if phase is None:
            continue
        index = min(len(cpu) - 1, int(phase / PHASE_BIN_S))
        cpu[index] += used
        seconds[index] += t1 - t0
    cores = [c / s if s else 0.0 for c, s in zip(cpu, seconds, strict=True)]
    median = statistics.median(cores) if cores else 0.0
    cycles = sum(seconds) / FLEET_INTERVAL_S
    # The burst of the cycle's start above the gateway's usual rate (its median bin).
    publishing_bins = int(PUBLISHING_S / PHASE_BIN_S)
    excess = sum((c - median) * PHASE_BIN_S for c in cores[:publishing_bins])
    return {
        "bins": [
            {"from_s": i * PHASE_BIN_S, **_latency(values), "gateway_cores": cores[i]}
            for i, values in enumerate(by_phase)
        ],
        "gateway_cores_median": median,
        "gateway_publish_cpu_s_per_cycle": excess if cycles else None,
    }


def _scrape_cpu(
    moments: Moments, trace: CpuTrace, names: dict[str, str], series: dict[str, float]
) -> dict[str, dict[str, float]]:
    """Per scraped Collector and the gateway: scrapes in the trace, CPU per scrape above
    the process's rate between scrapes, and that per series scraped."""
    result: dict[str, dict[str, float]] = {}
    if not trace.rows:
        return result
    first, last = trace.rows[0][0], trace.rows[-1][0]
    for address, intervals in moments.scrapes.items():
        name = names.get(address, address)
        if " " in name or (not name.startswith("collector-") and name != "gateway"):
            continue
        if name not in trace.pids:
            continue
        count = sum(1 for s, e in intervals if first <= s and e <= last)
        if not count:
            continue
        starts = [s for s, _ in intervals]
        _, time_in, excess = _excess_cpu(
            trace.deltas(name), lambda t, i=intervals, s=starts: _inside(t, i, s)
        )
        per_scrape = excess / count
        samples = series.get(address) or 0.0
        result[name] = {
            "scrapes": count,
            "seconds_per_scrape": time_in / count,
            "cpu_s_per_scrape": per_scrape,
            "series": samples,
            "us_per_series_per_scrape": per_scrape / samples * 1e6 if samples else 0.0,
        }
    return result
