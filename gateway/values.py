"""Is a data point's value something Prometheus can store? One check per point type.

Each check returns None for a good point, else why it is refused (the detail of
an `invalid_value` rejection). Besides NaN, infinities and negative counter
increments, the checks refuse shapes that the Collector's Prometheus exporter
mishandles: a histogram whose bucket counts do not match its bounds makes its
delta merging index out of range (a panic takes down the Collector, and with it
every tenant), a delta exponential histogram makes it allocate buckets by
offset distance, and a delta non-monotonic sum is silently dropped there. Each
explicit bound and each quantile is a Prometheus series of its own while the
series limit counts the point once: their number is bounded too.
"""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any

from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    DataPointFlags,
    ExponentialHistogramDataPoint,
    HistogramDataPoint,
    NumberDataPoint,
    SummaryDataPoint,
)

NO_RECORDED_VALUE = DataPointFlags.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
# Prometheus native histograms take schemas -4..8 (the exporter scales 9..20 down);
# OpenTelemetry SDKs use at most 20.
MIN_SCALE, MAX_SCALE = -4, 20
MAX_EXPONENTIAL_BUCKETS = 2048  # per side; SDKs default to 160
# The Prometheus text format has no exponential buckets (3 series a point); a bound or
# a quantile is one series: 20,000 bounds a point took the Collector to 670 MiB in 5 s.
MAX_EXPLICIT_BOUNDS = 64  # SDKs default to 15
MAX_QUANTILES = 64


def metric_problem(kind: str, data: Any) -> str | None:
    """A problem of the whole metric (its temporality), shared by all its points."""
    if kind not in ("sum", "histogram", "exponential_histogram"):
        return None
    temporality = data.aggregation_temporality
    if temporality not in (DELTA, CUMULATIVE):
        return "aggregation temporality is unspecified: use cumulative"
    if kind == "sum" and temporality == DELTA and not data.is_monotonic:
        return "a delta non-monotonic sum cannot be exported to Prometheus: use cumulative"
    if kind == "exponential_histogram" and temporality == DELTA:
        return "delta exponential histograms are not accepted: use cumulative temporality"
    return None


def _not_finite(value: float) -> bool:
    return not math.isfinite(value)


def number_problem(point: NumberDataPoint, monotonic: bool) -> str | None:
    """Gauge and sum points: a finite value; counters never go down."""
    which = point.WhichOneof("value")
    if which is None:
        return None if point.flags & NO_RECORDED_VALUE else "the data point has no value"
    value = point.as_double if which == "as_double" else point.as_int
    if _not_finite(value):
        return f"the value is {value}"
    if monotonic and value < 0:
        return f"a monotonic sum (counter) cannot be negative ({value})"
    return None


def _optional_not_finite(point: Any, *fields: str) -> str | None:
    for name in fields:
        if point.HasField(name) and _not_finite(getattr(point, name)):
            return f"{name} is {getattr(point, name)}"
    return None


def histogram_problem(point: HistogramDataPoint) -> str | None:
    """Explicit-bucket histograms: finite, increasing bounds; one count per bucket."""
    if point.flags & NO_RECORDED_VALUE:
        return None
    bounds, counts = point.explicit_bounds, point.bucket_counts
    if len(bounds) > MAX_EXPLICIT_BOUNDS:
        return f"{len(bounds)} bucket bounds, more than {MAX_EXPLICIT_BOUNDS} (one series each)"
    if counts and len(counts) != len(bounds) + 1:
        return f"{len(counts)} bucket counts for {len(bounds)} bounds (needs bounds + 1)"
    if any(_not_finite(b) for b in bounds) or any(a >= b for a, b in pairwise(bounds)):
        return "bucket bounds must be finite and strictly increasing"
    if counts and sum(counts) != point.count:
        return f"bucket counts add up to {sum(counts)}, not count={point.count}"
    return _optional_not_finite(point, "sum", "min", "max")


def exponential_histogram_problem(point: ExponentialHistogramDataPoint) -> str | None:
    """Exponential histograms: a scale Prometheus takes, a bounded number of buckets."""
    if point.flags & NO_RECORDED_VALUE:
        return None
    if not MIN_SCALE <= point.scale <= MAX_SCALE:
        return f"scale {point.scale} is outside {MIN_SCALE}..{MAX_SCALE}"
    for side in (point.positive, point.negative):
        if len(side.bucket_counts) > MAX_EXPONENTIAL_BUCKETS:
            return f"more than {MAX_EXPONENTIAL_BUCKETS} buckets on one side"
    if _not_finite(point.zero_threshold) or point.zero_threshold < 0:
        return f"zero_threshold is {point.zero_threshold}"
    if not point.HasField("sum"):
        return "an exponential histogram needs a sum for Prometheus"
    return _optional_not_finite(point, "sum", "min", "max")


def summary_problem(point: SummaryDataPoint) -> str | None:
    """Summaries: a finite sum; quantiles in 0..1 with finite values."""
    if point.flags & NO_RECORDED_VALUE:
        return None
    if _not_finite(point.sum):
        return f"sum is {point.sum}"
    if len(point.quantile_values) > MAX_QUANTILES:
        return (
            f"{len(point.quantile_values)} quantiles, more than {MAX_QUANTILES} (one series each)"
        )
    for q in point.quantile_values:
        if not 0.0 <= q.quantile <= 1.0 or _not_finite(q.value):
            return f"quantile {q.quantile} has value {q.value}"
    return None


def point_problem(kind: str, data: Any, point: Any) -> str | None:
    """The value problem of `point`, a data point of a metric of `kind`."""
    if kind == "gauge":
        return number_problem(point, monotonic=False)
    if kind == "sum":
        return number_problem(point, monotonic=data.is_monotonic)
    if kind == "histogram":
        return histogram_problem(point)
    if kind == "exponential_histogram":
        return exponential_histogram_problem(point)
    return summary_problem(point)
