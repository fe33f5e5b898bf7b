"""Hypothesis strategies for hostile OTLP metrics requests (used by test_hostile, test_validate)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2 as m

from gateway.validate import count_points

# Most examples should be plausible so that points reach the fake Collector;
# the rest is hostile. `one_of` draws its first branches most often.
GOOD_KEYS = st.sampled_from(["flow", "kind", "status", "region"])
BAD_KEYS = st.sampled_from(
    ["a.b", "a_b", "tenant_id", "tenant.id", "Tenant-ID", "le", "job", "instance", "__name__"]
)
WORSE_KEYS = st.sampled_from(["otel_scope_name", "Upper", "ünï", "", "k" * 70])
KEYS = st.one_of(GOOD_KEYS, GOOD_KEYS, GOOD_KEYS, BAD_KEYS, WORSE_KEYS, st.text(max_size=6))
ESCAPED = st.sampled_from(['a"b', "c\\d", "new\nline", "}{", 'x",tenant_id="globex'])
TEXT = st.one_of(
    st.sampled_from(["etl", "ok", "load"]),
    ESCAPED,
    ESCAPED,
    st.sampled_from(["", "v" * 40]),
    st.text(max_size=20),
)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
INT64 = st.integers(-(2**63), 2**63 - 1)
UINT64 = st.integers(0, 2**64 - 1)


@st.composite
def any_values(draw: st.DrawFn) -> AnyValue:
    """Mostly strings; sometimes ints, doubles, bools, bytes or arrays."""
    kind = draw(st.sampled_from(["s"] * 6 + ["i", "d", "b", "y", "a"]))
    if kind == "i":
        return AnyValue(int_value=draw(INT64))
    if kind == "d":
        return AnyValue(double_value=draw(FLOATS))
    if kind == "b":
        return AnyValue(bool_value=draw(st.booleans()))
    if kind == "y":
        return AnyValue(bytes_value=draw(st.binary(max_size=30)))
    if kind == "a":
        items = draw(st.lists(TEXT, max_size=4))
        return AnyValue(array_value=ArrayValue(values=[AnyValue(string_value=v) for v in items]))
    return AnyValue(string_value=draw(TEXT))


def attributes(max_size: int = 5) -> st.SearchStrategy[list[KeyValue]]:
    """Attribute lists, duplicates and tenant claims included."""
    pair = st.builds(lambda k, v: KeyValue(key=k, value=v), KEYS, any_values())
    return st.lists(pair, max_size=max_size)


@st.composite
def number_points(draw: st.DrawFn) -> m.NumberDataPoint:
    """Gauge/sum points: int, double (NaN, ±inf), or no value; sometimes flagged."""
    flags = draw(st.sampled_from([0, 0, 1]))
    point = m.NumberDataPoint(attributes=draw(attributes(2)), flags=flags)
    which = draw(st.sampled_from(["small", "small", "int", "double", "none"]))
    if which == "small":
        point.as_int = draw(st.integers(0, 1000))
    elif which == "int":
        point.as_int = draw(INT64)
    elif which == "double":
        point.as_double = draw(FLOATS)
    return point


@st.composite
def histogram_points(draw: st.DrawFn) -> m.HistogramDataPoint:
    """Histograms with consistent and inconsistent bucket shapes."""
    bounds = draw(st.lists(FLOATS, max_size=4))
    if draw(st.booleans()):
        bounds = sorted({b for b in bounds if math.isfinite(b)})
    size = draw(st.sampled_from([0, len(bounds) + 1, len(bounds), len(bounds) + 2]))
    counts = draw(st.lists(st.integers(0, 10), min_size=size, max_size=size))
    point = m.HistogramDataPoint(
        attributes=draw(attributes()),
        explicit_bounds=bounds,
        bucket_counts=counts,
        count=draw(st.sampled_from([sum(counts), sum(counts) + 1])),
    )
    if draw(st.booleans()):
        point.sum = draw(FLOATS)
    return point


@st.composite
def exponential_points(draw: st.DrawFn) -> m.ExponentialHistogramDataPoint:
    """Exponential histograms with in- and out-of-range scales and offsets."""
    point = m.ExponentialHistogramDataPoint(
        attributes=draw(attributes()),
        scale=draw(st.integers(-12, 30)),
        zero_threshold=draw(st.one_of(st.just(0.0), FLOATS)),
        count=draw(UINT64),
    )
    point.positive.offset = draw(st.integers(-(2**31), 2**31 - 1))
    point.positive.bucket_counts.extend(draw(st.lists(st.integers(0, 5), max_size=5)))
    if draw(st.booleans()):
        point.sum = draw(FLOATS)
    return point


@st.composite
def summary_points(draw: st.DrawFn) -> m.SummaryDataPoint:
    """Summaries with quantiles in and out of 0..1 and NaN values."""
    point = m.SummaryDataPoint(attributes=draw(attributes()), sum=draw(FLOATS), count=3)
    for q, v in draw(st.lists(st.tuples(FLOATS, FLOATS), max_size=3)):
        point.quantile_values.add(quantile=q, value=v)
    return point


@st.composite
def metrics(draw: st.DrawFn) -> m.Metric:
    """A metric of any (or no) type with a possibly disallowed name."""
    good = st.sampled_from(["app.count", "app.bytes", "app.latency"])
    name = draw(st.one_of(good, good, st.sampled_from(["app-count", "9x", "", "a" * 300]), KEYS))
    metric = m.Metric(name=name, unit=draw(st.sampled_from(["", "By", "s", "{x}"])))
    kind = draw(
        st.sampled_from(["gauge", "sum", "histogram", "exponential_histogram", "summary", None])
    )
    temporality = draw(st.sampled_from([2, 2, 2, 1, 0]))
    points: dict[str, Any] = {
        "gauge": number_points(),
        "sum": number_points(),
        "histogram": histogram_points(),
        "exponential_histogram": exponential_points(),
        "summary": summary_points(),
    }
    if kind is None:
        return metric
    data = getattr(metric, kind)
    data.data_points.extend(draw(st.lists(points[kind], max_size=8)))
    data.SetInParent()
    if kind == "sum":
        data.is_monotonic = draw(st.booleans())
    if kind in ("sum", "histogram", "exponential_histogram"):
        data.aggregation_temporality = temporality
    return metric


@st.composite
def requests(draw: st.DrawFn) -> ExportMetricsServiceRequest:
    """Whole requests: several resources and scopes, hostile service names."""
    request = ExportMetricsServiceRequest()
    for _ in range(draw(st.integers(0, 3))):
        resource_metrics = request.resource_metrics.add()
        resource_metrics.resource.attributes.extend(draw(attributes(2)))
        service = draw(st.sampled_from(["svc", "svc", "other", "other", "s" * 300, None]))
        if service is not None:
            resource_metrics.resource.attributes.add(
                key="service.name", value=AnyValue(string_value=service)
            )
        for _ in range(draw(st.integers(0, 2))):
            scope_metrics = resource_metrics.scope_metrics.add()
            scope_metrics.scope.name = draw(TEXT)
            scope_metrics.scope.attributes.extend(draw(attributes(1)))
            scope_metrics.metrics.extend(draw(st.lists(metrics(), max_size=4)))
    return request


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Serialized requests, unknown fields appended, corrupted bytes, or noise."""
    choice = draw(st.sampled_from(["request"] * 6 + ["unknown", "corrupt", "noise"]))
    if choice == "noise":
        return draw(st.binary(max_size=400))
    body = draw(requests()).SerializeToString()
    if choice == "unknown":
        return body + b"\x98\x06" + bytes([draw(st.integers(0, 127))])
    if choice == "corrupt" and body:
        at = draw(st.integers(0, len(body) - 1))
        return body[:at] + bytes([draw(st.integers(0, 255))]) + body[at + 1 :]
    return body


@pytest.mark.slow
@settings(max_examples=50, database=None, derandomize=True)
@given(requests())
def test_generated_requests_serialize_and_count(request: ExportMetricsServiceRequest) -> None:
    again = ExportMetricsServiceRequest.FromString(request.SerializeToString())
    assert count_points(again) == count_points(request)
