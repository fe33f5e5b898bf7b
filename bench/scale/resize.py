"""A resize under load: the gateway routes to one Collector more; what the moved agents'
series do in Prometheus and the alerts for the Collectors' 3-minute metric_expiration.

Where this sits: the scale benchmark `--resize`, after the sharded topology's last step
(scale_stack keeps a spare Collector, scraped but not routed to, for it).

Rendezvous hashing moves only the agents whose best Collector is the new one (about
1/(N+1) of them). The old Collector keeps exposing their last values until it expires
them, so for about 3 minutes two targets expose series with the same labels (the
exporter's job/instance are the agent's; `honor_labels`), and Prometheus appends both
targets' samples to one series: fresh and frozen values alternate. Sampled every
10 s: the series every Collector exposes (the excess over the step's is the doubled
ones), counters that appear to reset, and the alerts pending and firing.
"""

from __future__ import annotations

import time
from typing import Any

from bench.scale import probe
from bench.scale.run import SimAgents
from bench.scale.topologies import Topology
from stack.local import http_get

OBSERVE_S = 260.0
"""metric_expiration (3 minutes), a scrape interval, and margin."""
EVERY_S = 10.0
RESETS = (
    "count(resets({__name__=~"
    '"connector_queries_processed_total|agent_tasks_executed_total"}[1m]) > 0) or vector(0)'
)
"""Agents whose counter went down in the last minute: two targets' samples interleaved."""


def _collector_series(topology: Topology) -> float:
    rows = probe.instant(topology.query_url, 'scrape_samples_scraped{job="collector"}')
    return sum(float(row["value"][1]) for row in rows)


def _alerts(topology: Topology, state: str) -> dict[str, int]:
    promql = f'count by (alertname) (ALERTS{{alertstate="{state}"}})'
    return {
        row["metric"]["alertname"]: int(float(row["value"][1]))
        for row in probe.instant(topology.query_url, promql)
    }


def _agents_on(metrics_url: str) -> int:
    """Agents (target_info lines) a Collector's prometheus exporter holds now."""
    status, body = http_get(metrics_url, timeout=60.0)
    return body.count(b"\ntarget_info{") if status == 200 else -1


def run_resize(topology: Topology, sim: SimAgents) -> dict[str, Any]:
    """Add the spare Collector under load and watch for OBSERVE_S."""
    assert topology.resize is not None
    before = _collector_series(topology)
    alerts_before = _alerts(topology, "firing")
    sim.stats()  # the window of the resize starts here
    changed = topology.resize()
    started = changed["gateway_stopped_at"]
    print(
        f"\n== resize: the gateway restarted with {topology.collectors} Collectors, ready "
        f"{changed['gateway_ready_after_s']:.1f} s after it stopped; "
        f"{before:,.0f} series in the Collectors before"
    )
    samples = []
    moved = None
    while time.time() - started < OBSERVE_S:
        time.sleep(EVERY_S)
        elapsed = time.time() - started
        if moved is None and elapsed > 60:
            moved = _agents_on(changed["spare_metrics"])
        series = _collector_series(topology)
        row = {
            "t_s": elapsed,
            "collector_series": series,
            "excess_series": series - before,
            "agents_resetting": probe.scalar(topology.query_url, RESETS) or 0.0,
            "firing": _alerts(topology, "firing"),
            "pending": _alerts(topology, "pending"),
        }
        samples.append(row)
        print(
            f"  t+{elapsed:5.0f} s: series in the Collectors {series:,.0f} "
            f"({row['excess_series']:+,.0f}), agents with a counter going down "
            f"{row['agents_resetting']:,.0f}, firing {row['firing'] or '{}'}, "
            f"pending {row['pending'] or '{}'}",
            flush=True,
        )
    window = sim.stats()["window"]
    doubled = [row for row in samples if row["excess_series"] > 0]
    return {
        **changed,
        "collectors_after": topology.collectors,
        "series_before": before,
        "alerts_firing_before": alerts_before,
        "agents_moved": moved,
        "max_excess_series": max((row["excess_series"] for row in samples), default=0.0),
        "doubled_until_s": doubled[-1]["t_s"] if doubled else None,
        "max_agents_resetting": max((row["agents_resetting"] for row in samples), default=0.0),
        "export_errors": window["errors"],
        "samples": samples,
    }
