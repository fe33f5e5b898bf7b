"""What the scale benchmark reads from the running pipeline: PromQL answers, /metrics pages, /proc.

Where this sits: Prometheus (or Thanos Query), each TSDB's own /metrics and /proc ──▶
*probe* ──▶ bench/scale/'s figures.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Iterable
from typing import Any

from stack.local import StackError, http_get

QUERY_TIMEOUT_S = 180.0
"""Counting half a million series through Thanos Query takes seconds, more on a busy box."""

OWN_SERIES = (
    '{component="collector", __name__=~"(connector|agent)_.+", '
    '__name__!~"(connector|agent)_last_seen_.+"}'
)
"""The agents' own series (their metrics, not target_info nor the last-seen series)."""
LAST_SEEN = '{__name__=~"(connector|agent)_last_seen_(timestamp_)?seconds"}'
"""The 2 last-seen series per agent, which the gateway sends to the agent's Collector
(gateway/fleet/series.py): scraped from the Collectors with the agent's job and instance."""

STORE_METRICS = (
    "prometheus_tsdb_head_series",
    "prometheus_tsdb_head_samples_appended_total",
    "prometheus_remote_storage_samples_pending",
    "prometheus_remote_storage_samples_failed_total",
    "prometheus_remote_storage_samples_dropped_total",
    "prometheus_remote_storage_highest_timestamp_in_seconds",
    "prometheus_remote_storage_queue_highest_sent_timestamp_seconds",
)
"""Read from each TSDB's own /metrics (Prometheus, its shards, Thanos Receive), summed
over label sets."""


def instant(url: str, promql: str, at: float | None = None) -> list[dict[str, Any]]:
    """An instant query against a Prometheus API at `url` (Thanos Query: deduplicated),
    evaluated now or at Unix time `at`."""
    params = {"query": promql, "dedup": "true"}
    if at is not None:
        params["time"] = f"{at:.3f}"
    status, body = http_get(
        f"{url}/api/v1/query?{urllib.parse.urlencode(params)}", timeout=QUERY_TIMEOUT_S
    )
    if status != 200:
        raise StackError(f"{url} answered {status} to {promql!r}: {body[:300]!r}")
    result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
    return result


def scalar(url: str, promql: str) -> float | None:
    """The first value of an instant query, or None when it returns nothing."""
    result = instant(url, promql)
    return float(result[0]["value"][1]) if result else None


def exposition(url: str, names: Iterable[str] = STORE_METRICS) -> dict[str, float]:
    """Each of `names` in the text exposition at `url`, summed over its label sets
    (absent names are left out)."""
    status, body = http_get(url, timeout=30.0)
    if status != 200:
        return {}
    wanted = set(names)
    found: dict[str, float] = {}
    for line in body.decode(errors="replace").splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in wanted:
            try:
                value = float(line.rsplit(" ", 1)[1])
            except ValueError:
                continue
            found[name] = found.get(name, 0.0) + value
    return found


def agents_by_series(url: str, services: dict[str, str]) -> dict[str, dict[int, int]]:
    """Per agent type (`services`: job → type), how many agents have how many own
    series: {"connector": {8: 5000}, ...}. One query over every agent series."""
    promql = f'count_values by (job) ("series", count by (job, instance) ({OWN_SERIES}))'
    found: dict[str, dict[int, int]] = {}
    for row in instant(url, promql):
        kind = services.get(row["metric"].get("job", ""), row["metric"].get("job", "?"))
        per_count = found.setdefault(kind, {})
        per_count[int(row["metric"]["series"])] = int(float(row["value"][1]))
    return found


def scrape_figures(url: str, span_s: float, target_names: dict[str, str]) -> list[dict[str, Any]]:
    """Each target a Prometheus at `url` scrapes, over the last `span_s`: lowest `up`,
    mean and longest scrape duration, samples of the last scrape."""
    span = f"{span_s:.0f}s"
    queries = {
        "up_min": f"min_over_time(up[{span}])",
        "duration_avg_s": f"avg_over_time(scrape_duration_seconds[{span}])",
        "duration_max_s": f"max_over_time(scrape_duration_seconds[{span}])",
        "samples": "scrape_samples_scraped",
    }
    rows: dict[str, dict[str, Any]] = {}
    for figure, promql in queries.items():
        for row in instant(url, promql):
            address = row["metric"].get("instance", "?")
            name = target_names.get(address, row["metric"].get("component", address))
            rows.setdefault(address, {"target": name, "address": address})[figure] = float(
                row["value"][1]
            )
    return sorted(rows.values(), key=lambda row: str(row["target"]))


# -- what ran beside ---------------------------------------------------------------


def beside(
    before: dict[int, tuple[str, float]],
    after: dict[int, tuple[str, float]],
    ours: Iterable[int],
    seconds: float,
    top: int = 4,
) -> list[dict[str, Any]]:
    """The busiest processes between two `all_cpu_seconds` that are not in `ours`
    (nor this process), in cores, above 0.01."""
    mine = {*ours, os.getpid()}
    used: list[tuple[float, int, str]] = []
    for pid, (comm, cpu) in after.items():
        if pid in mine:
            continue
        # A process started during the window used all of its CPU time in it.
        cores = (cpu - before.get(pid, (comm, 0.0))[1]) / seconds
        if cores >= 0.01:
            used.append((cores, pid, comm))
    used.sort(reverse=True)
    return [{"pid": pid, "name": comm, "cores": cores} for cores, pid, comm in used[:top]]
