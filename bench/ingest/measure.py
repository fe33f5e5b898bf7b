"""One case's measurement: what the generator saw and what the SUT's processes spent."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from bench.ingest.cases import Case
from bench.loadgen import LoadResult

# -- measurements ---------------------------------------------------------------------


def _per(value: float, count: float) -> float | None:
    return value / count if count else None


@dataclass(frozen=True)
class Measurement:
    """One case in one round: what the generator saw, and what it cost the SUT and the
    Collector over the same window."""

    label: str
    case: Case
    round: int
    rate: float
    result: LoadResult
    window_s: float
    process_cpu_s: list[float]
    collector_cpu_s: float
    process_requests: list[float]
    """Gateways only: requests each process counted (whole run, warm-up included)."""
    other_sut_cores: float
    """Cores' worth of CPU the SUT's cores spent on anything but the SUT (other work on
    the machine, kernel threads): near 0 on a quiet machine."""
    other_load_cores: float
    """The same on the generator's and Collector's cores."""
    store_cpu_s: float | None = None
    """The state store's (redis-server's) CPU over the window; None without one."""

    def figures(self) -> dict[str, float | None]:
        """The derived figures (None where nothing was answered OK)."""
        result, latency = self.result, self.result.latency_ms
        ok = result.ok_per_s * result.duration_s
        cpu = sum(self.process_cpu_s)
        return {
            "ok_per_s": result.ok_per_s,
            "points_per_s": result.points_per_s,
            "sut_cores": cpu / self.window_s,
            "req_per_cpu_s": _per(ok, cpu),
            "cpu_us_per_req": _per(cpu * 1e6, ok),
            "points_per_cpu_s": _per(result.points_per_s * result.duration_s, cpu),
            "collector_cores": self.collector_cpu_s / self.window_s,
            "collector_us_per_req": _per(self.collector_cpu_s * 1e6, ok),
            "loadgen_us_per_req": _per(result.cpu_s * 1e6, result.requests),
            "p50_ms": latency.p50,
            "p90_ms": latency.p90,
            "p99_ms": latency.p99,
            "max_ms": latency.max,
            "bytes_per_request": result.bytes_per_request,
            "lag_p99_ms": result.lag_ms.p99 if self.rate else None,
            "other_sut_cores": self.other_sut_cores,
            "other_load_cores": self.other_load_cores,
            "store_cores": None if self.store_cpu_s is None else self.store_cpu_s / self.window_s,
            "store_us_per_req": None
            if self.store_cpu_s is None
            else _per(self.store_cpu_s * 1e6, ok),
        }

    def to_json(self) -> dict[str, Any]:
        """Everything, the generator's own output included."""
        return {
            "label": self.label,
            "round": self.round,
            "rate": self.rate,
            **self.figures(),
            "window_s": self.window_s,
            "process_cpu_s": self.process_cpu_s,
            "collector_cpu_s": self.collector_cpu_s,
            "store_cpu_s": self.store_cpu_s,
            "process_requests": self.process_requests,
            "loadgen": self.result.raw,
        }


def medians(measurements: list[Measurement]) -> dict[str, dict[str, Any]]:
    """Per label: the median of every figure over the rounds, and every refusal seen."""
    by_label: dict[str, list[Measurement]] = {}
    for m in measurements:
        by_label.setdefault(m.label, []).append(m)
    rows: dict[str, dict[str, Any]] = {}
    for label, runs in by_label.items():
        figures = [m.figures() for m in runs]
        row: dict[str, Any] = {"sut": runs[0].case.sut, "rounds": len(runs)}
        for key in figures[0]:
            values = [v for f in figures if (v := f[key]) is not None]
            row[key] = statistics.median(values) if values else None
        refused: dict[str, int] = {}
        for m in runs:
            for status, count in m.result.refused.items():
                refused[status] = refused.get(status, 0) + count
        row["refused"] = refused
        row["unsent"] = sum(m.result.unsent for m in runs)
        row["errors"] = sorted({e for m in runs for e in m.result.errors})[:5]
        row["process_requests"] = [m.process_requests for m in runs if m.process_requests]
        rows[label] = row
    return rows
