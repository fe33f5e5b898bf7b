"""The tables: throughput and latency per case, medians over rounds, against the targets."""

from __future__ import annotations

from typing import Any

from bench.ingest.cases import (
    BUSY_CORES,
    EXPORT_INTERVAL_S,
    GENERATOR_LAG_MS,
    SCALE_MIX,
    SHARED_STATE_BASES,
)

Column = tuple[str, int]
"""Header and decimals (-1: a left-aligned text column)."""


def table(title: str, columns: list[Column], rows: list[list[Any]]) -> None:
    """Print `rows` under `title` (nothing when there are none); None shows as '-'."""
    if not rows:
        return
    cells = [
        [
            str(v) if d < 0 else "-" if v is None else f"{v:,.{d}f}"
            for v, (_, d) in zip(row, columns, strict=True)
        ]
        for row in rows
    ]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, (h, _) in enumerate(columns)]
    print(f"\n{title}")
    for line in [[h for h, _ in columns], *cells]:
        print(
            "  ".join(
                f"{c:<{w}}" if d < 0 else f"{c:>{w}}"
                for c, w, (_, d) in zip(line, widths, columns, strict=True)
            ).rstrip()
        )


def fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def refusals(refused: dict[str, int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(refused.items()))


LEGEND = """\
  req/s: answered OK per second (wall). SUT cores: the SUT's CPU seconds per second.
  req/CPU-s: OK requests per CPU-second of the SUT, i.e. requests/s per core. µs/req: the
  SUT's CPU per OK request; coll: the Collector's; gen: the load generator's. other: CPU
  the SUT's cores spent on anything else (other work on the machine): ~0 when quiet."""


def print_tables(
    rows: dict[str, dict[str, Any]],
    latency: list[dict[str, Any]],
    failures: dict[str, str],
    cpus: str,
) -> None:
    """The readable report: throughput, ratios to the Collector alone, scaling, latency."""
    keys = ["ok_per_s", "points_per_s", "sut_cores", "req_per_cpu_s", "cpu_us_per_req"]
    keys += ["collector_us_per_req", "loadgen_us_per_req", "p50_ms", "p99_ms", "other_sut_cores"]
    table(
        f"Throughput, closed loop (medians); CPUs: {cpus}",
        [
            *[("case", -1), ("req/s", 0), ("points/s", 0), ("SUT cores", 2)],
            *[("req/CPU-s", 0), ("µs/req", 0), ("coll µs/req", 0)],
            *[("gen µs/req", 1), ("p50 ms", 2), ("p99 ms", 2), ("other", 2), ("refused", -1)],
        ],
        [[name, *(r[k] for k in keys), refusals(r["refused"])] for name, r in rows.items()],
    )
    if rows:
        print(LEGEND)
    ratios = []
    for load in ("20p", "20p gzip", "500p", "500p gzip"):
        gateway, alone = rows.get(f"gateway grpc {load}"), rows.get(f"collector grpc {load}")
        if gateway and alone and gateway["cpu_us_per_req"] and alone["cpu_us_per_req"]:
            own, base = gateway["cpu_us_per_req"], alone["cpu_us_per_req"]
            whole = own + (gateway["collector_us_per_req"] or 0)
            ratios.append([load, own, base, own / base, whole / base, base / own])
    table(
        "The gateway against the Collector alone, same gRPC load: CPU µs per request",
        [
            *[("load", -1), ("gateway", 0), ("Collector alone", 0)],
            *[("gateway ÷ alone", 1), ("(gateway + its Collector) ÷ alone", 1)],
            ("gateway req/CPU-s ÷ alone's", 3),
        ],
        ratios,
    )
    table(
        "Gateways sharing one gRPC port (GATEWAY_GRPC_REUSE_PORT), requests per process",
        [("case", -1), ("req/s", 0), ("req/CPU-s", 0), ("split by round", -1)],
        [
            [name, r["ok_per_s"], r["req_per_cpu_s"], str(r["process_requests"])]
            for name, r in rows.items()
            if r["sut"] in ("gateway_x1", "gateway_x2")
        ],
    )
    print_shared_state(rows)
    if latency:
        q = ["gateway_p50_ms", "gateway_p99_ms", "direct_p50_ms", "direct_p99_ms"]
        q += ["added_p50_ms", "added_p99_ms", "gateway_cpu_us_per_req", "direct_cpu_us_per_req"]
        table(
            "Added latency, open loop (medians; direct = the Collector's OTLP/gRPC receiver)",
            [
                *[("path", -1), ("rate/s", 0), ("gw p50", 2), ("gw p99", 2)],
                *[("direct p50", 2), ("direct p99", 2), ("+p50 ms", 2)],
                *[("+p99 ms", 2), ("gw µs/req", 0), ("coll µs/req", 0)],
                *[("lowest achieved", 2), ("note", -1)],
            ],
            [
                [r["path"], r["rate"], *(r[k] for k in q), r["achieved_min"], _latency_note(r)]
                for r in latency
            ],
        )
    print_targets(rows, latency)
    for name, reason in failures.items():
        print(f"\nNOT MEASURED {name}: {reason}")


SHARED_STATE_TARGET = 1.05
"""A gateway process with its state in Redis: at most 5 % more CPU per request."""


def print_shared_state(rows: dict[str, dict[str, Any]]) -> None:
    """Each load in memory and with Redis, one process and two: the gateway's CPU per
    request against one process in memory and against as many processes in memory,
    Redis's own, and (paced) what an agent costs Redis."""
    lines = []
    for load in ("grpc 20p", f"{SCALE_MIX} gzip", f"{SCALE_MIX} gzip paced"):
        one = rows.get(f"gateway {load}")
        for sut, base_sut in SHARED_STATE_BASES.items():
            if (row := rows.get(f"{sut} {load}")) is None:
                continue
            base = rows.get(f"{base_sut} {load}")
            own = row["cpu_us_per_req"]
            ratios = [
                own / memory if own and (memory := other and other["cpu_us_per_req"]) else None
                for other in (one, base)
            ]
            # Paced, the load is what rate x interval agents send: Redis's cores per agent.
            agents = row["ok_per_s"] * EXPORT_INTERVAL_S if load.endswith("paced") else 0
            store = row.get("store_cores")
            per_thousand = store * 1e3 / (agents / 1e3) if store and agents else None
            per_core = agents / store if store and agents else None
            redis = [row.get("store_us_per_req"), store, per_thousand, per_core]
            lines.append([load, sut, row["ok_per_s"], own, *ratios, *redis, row["other_sut_cores"]])
    table(
        f"Shared state: one process and two, in memory and with Redis "
        f"(target: ÷ in memory <= {SHARED_STATE_TARGET:.2f})",
        [
            *[("load", -1), ("SUT", -1), ("req/s", 0), ("gw µs/req", 0)],
            *[("÷ 1 in memory", 3), ("÷ as many in memory", 3)],
            *[("Redis µs/req", 1), ("Redis cores", 4)],
            *[(f"Redis ms/s per 1,000 agents ({EXPORT_INTERVAL_S:g} s)", 2)],
            *[("agents per Redis core", 0), ("other", 2)],
        ],
        lines,
    )


TARGETS = [
    ("gateway grpc 20p", "req/s", "req_per_cpu_s", "ok_per_s", 3_000),
    ("gateway grpc 500p", "points/s", "points_per_cpu_s", "points_per_s", 1_000_000),
]
"""Targets for one gateway process on one core: case, unit, figures, at least."""
HTTP_BASELINE = ("gateway http 20p", "previous_design legacy-json 20p")
"""OTLP/HTTP per core must reach the previous design's figure measured in the same run."""
ADDED_P99_TARGET_MS = 5.0
REAL_REQUEST_TARGET_US = 1_000
"""Gateway CPU per request of the scale mix (34.5 points, gzip), at most."""


def _latency_note(row: dict[str, Any]) -> str:
    notes = [] if row["valid"] else ["OVERLOADED: answers fell behind the rate, not a latency"]
    if row["other_max"] > BUSY_CORES:
        notes.append(f"BUSY machine: other work took up to {row['other_max']:.2f} of a core")
    if row["lag_p99_ms_max"] > GENERATOR_LAG_MS:
        notes.append(f"the generator sent up to {row['lag_p99_ms_max']:.1f} ms late (p99)")
    if row["unsent"]:
        notes.append(f"unsent {row['unsent']}")
    return " ".join([*notes, refusals(row["refused"])]).strip()


def print_targets(rows: dict[str, dict[str, Any]], latency: list[dict[str, Any]]) -> None:
    """Each target beside the figure per core of the gateway and the one seen (wall)."""
    lines: list[list[Any]] = []
    for case, unit, per_core, wall, goal in TARGETS:
        if row := rows.get(case):
            lines.append([f"{case}, {unit}", row[per_core], row[wall], f">= {goal:,}"])
    http, baseline = (rows.get(case) for case in HTTP_BASELINE)
    if http and baseline and baseline["req_per_cpu_s"]:
        floor = f">= {baseline['req_per_cpu_s']:,.0f} (previous design, this run)"
        lines.append([f"{HTTP_BASELINE[0]}, req/s", http["req_per_cpu_s"], http["ok_per_s"], floor])
    if real := rows.get(f"gateway {SCALE_MIX} gzip"):
        ceiling = f"<= {REAL_REQUEST_TARGET_US:,} (closed loop)"
        lines.append([f"{SCALE_MIX}, gateway CPU µs/req", real["cpu_us_per_req"], None, ceiling])
    for row in latency:
        if row["path"] == "grpc 20p":
            figure = f"added p99 ms, grpc 20p at {row['rate']:,.0f}/s"
            target = f"<= {ADDED_P99_TARGET_MS:g}" + ("" if row["valid"] else " (OVERLOADED run)")
            lines.append([figure, None, row["added_p99_ms"], target])
        if row["path"] == SCALE_MIX:
            figure = f"{SCALE_MIX}, gateway CPU µs/req at {row['rate']:,.0f}/s"
            target = f"<= {REAL_REQUEST_TARGET_US:,}"
            lines.append([figure, row["gateway_cpu_us_per_req"], None, target])
    table(
        "Targets (one gateway process): per core = per CPU-second of the gateway; seen = wall",
        [("figure", -1), ("per core", 0), ("seen", 1), ("target", -1)],
        lines,
    )
