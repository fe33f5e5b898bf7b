"""the scale benchmark's tables: one per step as it ends, the topologies side by side at the end."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_step(step: dict[str, Any]) -> None:
    """One step's table."""
    window, found, expected = step["simagents_window"], step["found"], step["expected"]
    beside = ", ".join(f"{b['name']} {b['cores']:.2f}" for b in step["beside"]) or "nothing"
    print(
        f"\n== {step['topology']} ({step['collector_count']} Collector(s)), "
        f"{step['agents']:,} agents, {step['tenants']:,} tenants: "
        f"{step['requests_per_s']:.0f} requests/s, "
        f"{step['data_points_per_s']:,.0f} points/s sent ({step['data_points_ok_per_s']:,.0f} "
        f"accepted), window {step['window_s']:.0f} s\n  machine: "
        f"{step['machine_cores_busy']:.2f} of {step['machine_cores']:.1f} cores busy, "
        f"{step['other_cores_busy']:.2f} outside the processes below (beside: {beside}); "
        f"iowait {step['machine_cores_iowait']:.2f}"
    )
    print(f"  {'component':<22}{'cores':>8}{'µs/request':>12}{'RSS end MiB':>13}{'peak MiB':>10}")
    for name, figures in sorted(step["components"].items()):
        print(
            f"  {name:<22}{figures['cores']:8.3f}{_fmt(figures['cpu_us_per_request'], '12.0f')}"
            f"{_fmt(figures['rss_mb_end'], '13.1f')}{_fmt(figures['rss_mb_peak'], '10.1f')}"
        )
    for name, store in sorted(step["stores"].items()):
        lag = store["remote_write_lag_s"]
        print(
            f"  TSDB {name:<20} head series {_fmt(store['head_series'], ',.0f')}, "
            f"{_fmt(store['samples_per_s'], ',.0f')} samples/s appended"
            + (
                f", remote write lag {lag:.1f} s, pending {store['remote_write_pending']:.0f}, "
                f"failed {store['remote_write_failed']:.0f}, dropped "
                f"{store['remote_write_dropped'] or 0:.0f}"
                if lag is not None
                else ""
            )
        )
    latency, lateness = window["latency_s"], window["lateness_s"]
    print(
        f"  sends: {window['sent']:,} ok {window['ok']:,} errors {window['errors'] or 0} "
        f"partial-rejected points {window['rejected_points']} late(>1 s) {window['late']} "
        f"max in flight {window['max_in_flight']}"
    )
    if latency:
        print(
            f"  export latency ms: p50 {latency['p50'] * 1e3:.1f} p99 {latency['p99'] * 1e3:.1f} "
            f"max {latency['max'] * 1e3:.1f}; send lateness ms: p99 "
            f"{lateness.get('p99', 0) * 1e3:.1f} max {lateness.get('max', 0) * 1e3:.1f}"
        )
    print(
        f"  agents' own series {found['own_series']:,} (expected {expected['own_series']:,}); "
        f"agents by series count {found['agents_by_series']} (expected "
        f"{expected['agents_per_type']} with {expected['series_per_type']}); target_info "
        f"{found['target_info']:,.0f}; last-seen {found['last_seen']:,.0f} (expected "
        f"{expected['last_seen']:,}); counting took {found['count_query_s']:.1f} s"
    )
    gateway, collectors = step["gateway"], step["collectors"]
    print(
        f"  since start: gateway requests {gateway['requests_by_outcome']}, forward p99 "
        f"{_fmt(gateway['forward_p99_s'], '.4f')} s; Collectors refused points "
        f"{collectors['refused_points']:.0f}, failed exports "
        f"{collectors['export_failed_points']:.0f}"
    )
    for scraper, rows in sorted(step["scrapes"].items()):
        for row in rows:
            print(
                f"  {scraper} scrapes {row['target']:<26} up(min) {_fmt(row.get('up_min'), '.0f')} "
                f"duration mean {_fmt(row.get('duration_avg_s'), '.3f')} s max "
                f"{_fmt(row.get('duration_max_s'), '.3f')} s, samples "
                f"{_fmt(row.get('samples'), ',.0f')}"
            )
    print_moments(step.get("moments"))
    print(f"  problems: {'; '.join(step['problems']) or 'none'}", flush=True)


MOMENTS = (
    ("all", "all exports"),
    ("own_scrape", "its Collector being scraped"),
    ("any_scrape", "any Collector being scraped"),
    ("gateway_scrape", "the gateway being scraped"),
    ("publishing", "fleet series publishing"),
    ("quiet", "none of these"),
)


def print_moments(moments: dict[str, Any] | None) -> None:
    """Export latency by moment, the publishing cycle's profile, the cost of scrapes."""
    if not moments:
        return
    print(
        f"  export latency by moment ({moments['publish_starts_seen']} publishing cycles "
        f"seen; publishing = the first {moments['publishing_s']:g} s of each "
        f"{moments['fleet_interval_s']:g} s cycle):"
    )
    for key, label in MOMENTS:
        figures = moments["latency"].get(key, {})
        if figures.get("exports"):
            print(
                f"    started during {label:<30} {figures['exports']:>7,} exports, p50 "
                f"{figures['p50_ms']:7.1f} ms, p99 {figures['p99_ms']:7.1f} ms, max "
                f"{figures['max_ms']:7.1f} ms"
            )
    profile = moments.get("phase_profile", {})
    bins = [b for b in profile.get("bins", []) if b.get("exports")]
    if bins:
        cells = " ".join(
            f"{b['from_s']:g}:{b['p99_ms']:.0f}/{b['gateway_cores']:.2f}" for b in bins
        )
        publish = profile.get("gateway_publish_cpu_s_per_cycle")
        print(
            f"    by phase of the cycle (s: p99 ms / gateway cores): {cells}; gateway CPU "
            f"of a publishing cycle {_fmt(publish * 1e3 if publish is not None else None, '.0f')}"
            " ms"
        )
    for name, cost in sorted(moments.get("scrape_cpu", {}).items()):
        print(
            f"    scrapes of {name:<12} {cost['scrapes']:>3}: {cost['seconds_per_scrape']:.3f} s, "
            f"{cost['cpu_s_per_scrape'] * 1e3:.0f} ms CPU each, "
            f"{cost['us_per_series_per_scrape']:.2f} µs per series ({cost['series']:,.0f})"
        )


SIDE_BY_SIDE = (
    ("requests/s", "requests_per_s", ",.0f"),
    ("data points/s", "data_points_per_s", ",.0f"),
    ("agents with all their series", "agents_complete", ",.0f"),
    ("agents' own series found", "found_own_series", ",.0f"),
    ("  expected", "expected_own_series", ",.0f"),
    ("last-seen series found", "found_last_seen", ",.0f"),
    ("gateway refusals (since start)", "gateway_refused", ",.0f"),
    ("Collector refused points", "collector_refused_points", ",.0f"),
    ("export errors in the window", "export_errors", ",.0f"),
    ("export p50/p99 ms", ("export_p50_ms", "export_p99_ms"), ",.0f"),
    (
        "  during its Collector's scrape",
        ("export_p50_ms/own_scrape", "export_p99_ms/own_scrape"),
        ",.0f",
    ),
    ("  during publishing", ("export_p50_ms/publishing", "export_p99_ms/publishing"), ",.0f"),
    ("  quiet", ("export_p50_ms/quiet", "export_p99_ms/quiet"), ",.0f"),
    ("machine cores busy", "machine_cores_busy", ".2f"),
    ("  outside the pipeline", "other_cores_busy", ".2f"),
    ("gateway cores", "cores/gateway", ".3f"),
    ("Collectors cores (sum)", "cores/collectors", ".3f"),
    ("Prometheus cores (sum)", "cores/prometheus-all", ".3f"),
    ("Receive cores", "cores/thanos-receive", ".3f"),
    ("Query cores", "cores/thanos-query", ".3f"),
    ("Ruler cores", "cores/thanos-rule", ".3f"),
    ("simagents cores", "cores/simagents", ".3f"),
    ("gateway RSS end/peak MiB", ("rss_mb_end/gateway", "rss_mb_peak/gateway"), ",.0f"),
    ("Collectors RSS end/peak MiB", ("rss_mb_end/collectors", "rss_mb_peak/collectors"), ",.0f"),
    (
        "Prometheus RSS end/peak MiB",
        ("rss_mb_end/prometheus-all", "rss_mb_peak/prometheus-all"),
        ",.0f",
    ),
    (
        "Receive RSS end/peak MiB",
        ("rss_mb_end/thanos-receive", "rss_mb_peak/thanos-receive"),
        ",.0f",
    ),
    ("Query RSS end/peak MiB", ("rss_mb_end/thanos-query", "rss_mb_peak/thanos-query"), ",.0f"),
    ("Collector scrape mean/max s", ("scrape_avg_s/collectors", "scrape_max_s/collectors"), ".2f"),
    ("gateway scrape mean/max s", ("scrape_avg_s/gateway", "scrape_max_s/gateway"), ".3f"),
    ("series in the Collectors", "series/collectors", ",.0f"),
    ("Prometheus head series (sum)", "head_series/prometheus", ",.0f"),
    ("Receive head series", "head_series/receive", ",.0f"),
    ("remote-write lag s", "remote_write_lag_s", ".1f"),
    ("count query s", "count_query_s", ".1f"),
    ("gateway µs/request", "cost/gateway_us_per_request", ",.0f"),
    ("Collectors µs/data point", "cost/collectors_us_per_point", ",.0f"),
    ("Collectors cores/100k series", "cost/collectors_cores_per_100k_series", ".3f"),
    ("Collectors bytes/series", "cost/collectors_bytes_per_series", ",.0f"),
    ("Collectors µs/series/scrape", "cost/collectors_us_per_series_per_scrape", ".2f"),
    ("gateway ms/publishing cycle", "cost/gateway_publish_ms_per_cycle", ",.0f"),
    ("Prometheus µs/sample", "cost/prometheus_us_per_sample", ".2f"),
    ("Prometheus bytes/series", "cost/prometheus_bytes_per_series", ",.0f"),
    ("Receive µs/sample", "cost/receive_us_per_sample", ".2f"),
    ("Receive bytes/series", "cost/receive_bytes_per_series", ",.0f"),
    ("steps with problems", "problems", ".0f"),
)


def _cell(flat: dict[str, float] | None, key: str | tuple[str, str], spec: str) -> str:
    if flat is None:
        return ""
    if isinstance(key, tuple):
        return " / ".join(_fmt(flat.get(k), spec) for k in key)
    return _fmt(flat.get(key), spec)


def print_side_by_side(summary: dict[str, Any]) -> None:
    """Per agent count, each figure's median across rounds, one column per topology."""
    topologies = list(summary)
    counts = sorted({int(a) for t in summary.values() for a in t["by_agents"]})
    for agents in counts:
        columns = [summary[t]["by_agents"].get(str(agents)) for t in topologies]
        rounds = [str(int(c["rounds"])) if c else "-" for c in columns]
        print(f"\n== {agents:,} agents: medians over rounds ({', '.join(rounds)})")
        print(f"  {'':<32}" + "".join(f"{t:>22}" for t in topologies))
        for label, key, spec in SIDE_BY_SIDE:
            cells = [_cell(c, key, spec) for c in columns]
            if any(cell not in ("", "-", "- / -") for cell in cells):
                print(f"  {label:<32}" + "".join(f"{cell:>22}" for cell in cells))
    for topology in topologies:
        costs = summary[topology]["marginal"]
        if costs:
            text = ", ".join(f"{k} {v:,.3g}" for k, v in costs.items())
            print(f"\n  {topology}, marginal costs: {text}")
