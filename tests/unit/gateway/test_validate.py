"""Which data points are dropped, for which reason, and that the rest stay untouched."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from gateway_fixtures import counter_request
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2 as m
from test_hostile_strategies import requests

from gateway.limits import TenantLimits
from gateway.series import ActiveSeries
from gateway.validate import Rejections, count_points, enforce, serialized_points

LIMITS = TenantLimits(
    max_request_bytes=1 << 20, max_attributes_per_point=4, max_attribute_value_length=20
)


def _kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _enforce(
    request: ExportMetricsServiceRequest,
    limits: TenantLimits = LIMITS,
    series: ActiveSeries | None = None,
) -> Rejections:
    return enforce(request, "acme", limits, series or ActiveSeries(600), now=0.0)


def _request(*metrics: m.Metric) -> ExportMetricsServiceRequest:
    return ExportMetricsServiceRequest(
        resource_metrics=[m.ResourceMetrics(scope_metrics=[m.ScopeMetrics(metrics=metrics)])]
    )


def _counter(value: float, **attributes: str) -> m.Metric:
    point = m.NumberDataPoint(
        as_double=value, attributes=[_kv(k, v) for k, v in attributes.items()]
    )
    return m.Metric(
        name="app.count",
        sum=m.Sum(data_points=[point], is_monotonic=True, aggregation_temporality=2),
    )


def _histogram(**fields: object) -> m.Metric:
    point = m.HistogramDataPoint(**fields)  # type: ignore[arg-type]
    return m.Metric(
        name="app.latency", histogram=m.Histogram(data_points=[point], aggregation_temporality=2)
    )


CASES: dict[str, tuple[str, Callable[[], m.Metric]]] = {
    "nan": ("invalid_value", lambda: _counter(math.nan)),
    "infinity": ("invalid_value", lambda: _counter(-math.inf)),
    "negative counter": ("invalid_value", lambda: _counter(-1.0)),
    "no value": (
        "invalid_value",
        lambda: m.Metric(name="g", gauge=m.Gauge(data_points=[m.NumberDataPoint()])),
    ),
    "unspecified temporality": (
        "invalid_value",
        lambda: m.Metric(name="s", sum=m.Sum(data_points=[m.NumberDataPoint(as_int=1)])),
    ),
    "bucket counts off by one": (
        "invalid_value",
        lambda: _histogram(count=1, explicit_bounds=[1.0, 2.0], bucket_counts=[1, 0]),
    ),
    "bounds not increasing": (
        "invalid_value",
        lambda: _histogram(count=0, explicit_bounds=[2.0, 1.0], bucket_counts=[0, 0, 0]),
    ),
    # Each bound is a series of its own in the Collector (x_bucket{le=...}).
    "too many bounds": (
        "invalid_value",
        lambda: _histogram(
            count=0, explicit_bounds=[float(b) for b in range(65)], bucket_counts=[0] * 66
        ),
    ),
    "too many quantiles": (
        "invalid_value",
        lambda: m.Metric(
            name="q",
            summary=m.Summary(
                data_points=[
                    m.SummaryDataPoint(
                        quantile_values=[
                            m.SummaryDataPoint.ValueAtQuantile(quantile=q / 100, value=1.0)
                            for q in range(65)
                        ]
                    )
                ]
            ),
        ),
    ),
    "delta exponential histogram": (
        "invalid_value",
        lambda: m.Metric(
            name="e",
            exponential_histogram=m.ExponentialHistogram(
                data_points=[m.ExponentialHistogramDataPoint(sum=1.0, count=1)],
                aggregation_temporality=1,
            ),
        ),
    ),
    "name with a dash": (
        "metric_name_not_allowed",
        lambda: m.Metric(name="app-count", gauge=m.Gauge(data_points=[m.NumberDataPoint()])),
    ),
    "too many attributes": (
        "attribute_limit",
        lambda: _counter(1.0, a="1", b="2", c="3", d="4", e="5"),
    ),
    "upper-case key": ("attribute_key_not_allowed", lambda: _counter(1.0, Flow="x")),
    "reserved key": ("attribute_key_not_allowed", lambda: _counter(1.0, le="x")),
    "keys that make one label": (
        "attribute_key_not_allowed",
        lambda: _counter(1.0, **{"flow.name": "x", "flow_name": "y"}),
    ),
    "long value": ("attribute_value_too_long", lambda: _counter(1.0, flow="x" * 21)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_point_is_dropped_for_its_reason_and_a_good_one_kept(case: str) -> None:
    reason, bad = CASES[case]
    request = _request(bad(), _counter(3.0, flow="etl"))
    rejections = _enforce(request)
    assert rejections.counts == {reason: 1}
    message = rejections.message(sent=2)
    assert message.startswith(f"1 of 2 data points rejected; {reason}: 1 (")
    metrics = request.resource_metrics[0].scope_metrics[0].metrics
    assert count_points(request) == 1
    assert metrics[1].sum.data_points[0].as_double == 3.0


def test_messages_name_the_setting_that_changes_the_limit() -> None:
    rejections = _enforce(_request(_counter(1.0, flow="x" * 21)))
    assert "(setting: max_attribute_value_length)" in rejections.message(1)
    assert "limit max_attribute_value_length=20" in rejections.message(1)


@pytest.mark.parametrize(
    "value", ['a"b', "back\\slash", "new\nline", "}{", 'x",tenant_id="globex', "ünï €"]
)
def test_values_that_need_escaping_in_prometheus_are_kept(value: str) -> None:
    request = _request(_counter(1.0, flow=value))
    assert _enforce(request).total == 0
    assert count_points(request) == 1


def test_tenant_claims_count_for_nothing_they_are_removed_anyway() -> None:
    request = _request(_counter(1.0, **{"a": "1", "b": "2", "c": "3", "d": "4", "Tenant-ID": "x"}))
    assert _enforce(request).total == 0


def test_scope_attributes_count_towards_the_attribute_limit() -> None:
    request = _request(_counter(1.0, a="1", b="2", c="3"))
    request.resource_metrics[0].scope_metrics[0].scope.attributes.extend(
        [_kv("lib", "x"), _kv("lib2", "y")]
    )
    assert _enforce(request).counts == {"attribute_limit": 1}


def test_non_string_values_are_measured_by_their_size() -> None:
    big = AnyValue(array_value=ArrayValue(values=[AnyValue(int_value=n) for n in range(20)]))
    request = _request(_counter(1.0))
    request.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0].attributes.append(
        KeyValue(key="ids", value=big)
    )
    assert _enforce(request).counts == {"attribute_value_too_long": 1}


def test_a_long_service_name_drops_every_point_of_its_resource() -> None:
    request = _request(_counter(1.0), _counter(2.0))
    request.resource_metrics[0].resource.attributes.append(_kv("service.name", "s" * 21))
    assert _enforce(request).counts == {"attribute_value_too_long": 2}


def test_the_series_limit_counts_name_attributes_and_service() -> None:
    series = ActiveSeries(window_seconds=600)
    limits = LIMITS.with_overrides({"max_active_series": 2})
    first = _request(_counter(1.0, flow="a"), _counter(1.0, flow="b"))
    assert _enforce(first, limits, series).total == 0
    again = _request(_counter(5.0, flow="b"), _counter(5.0, flow="a"), _counter(1.0, flow="c"))
    assert _enforce(again, limits, series).counts == {"series_limit": 1}
    other_service = _request(_counter(1.0, flow="a"))
    other_service.resource_metrics[0].resource.attributes.append(_kv("service.name", "two"))
    assert _enforce(other_service, limits, series).counts == {"series_limit": 1}


def test_series_idle_longer_than_the_window_make_room() -> None:
    series = ActiveSeries(window_seconds=60)
    assert series.admit("acme", 1, limit=1, now=0.0)
    assert not series.admit("acme", 2, limit=1, now=59.0)
    assert series.admit("acme", 1, limit=1, now=59.0)  # known: refreshed
    assert not series.admit("acme", 2, limit=1, now=118.0)
    assert series.admit("acme", 2, limit=1, now=119.5)  # 1 idle for 60.5 s
    assert series.count("acme", now=119.5) == 1
    assert series.admit("globex", 1, limit=1, now=0.0)  # tenants are separate


def test_a_no_recorded_value_point_is_a_valid_staleness_marker() -> None:
    point = m.NumberDataPoint(flags=1)
    request = _request(m.Metric(name="g", gauge=m.Gauge(data_points=[point])))
    assert _enforce(request).total == 0


def test_a_pattern_list_can_widen_what_is_allowed() -> None:
    limits = LIMITS.with_overrides(
        {"metric_name_patterns": [r"[a-z][a-z0-9_.\-]*"], "attribute_key_patterns": [".*"]}
    )
    metric = _counter(1.0, Flow="x")
    metric.name = "app-count"
    assert _enforce(_request(metric), limits).total == 0


def test_counter_request_fixture_passes_the_defaults() -> None:
    request = counter_request(point_attributes={"kind": "x"})
    assert _enforce(request).total == 0


@st.composite
def _number_requests(draw: st.DrawFn) -> ExportMetricsServiceRequest:
    """Gauges and sums with every field a point may carry: times, exemplars, flags,
    odd doubles, long attribute values (multi-byte lengths)."""
    doubles = st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([-0.0, 5e-324, -5e-324, 1.7976931348623157e308]),
    )
    metrics = []
    for name in draw(st.lists(st.sampled_from(["a.count", "a.level", "b.count"]), max_size=4)):
        points = []
        for _ in range(draw(st.integers(0, 6))):
            point = m.NumberDataPoint(
                start_time_unix_nano=draw(st.sampled_from([0, 1, 2**63])),
                time_unix_nano=draw(st.sampled_from([0, 1_700_000_000_000_000_000])),
                flags=draw(st.sampled_from([0, 0, 1])),
                attributes=[
                    _kv(k, v)
                    for k, v in draw(
                        st.dictionaries(
                            st.sampled_from(["flow", "kind", "Bad", "tenant_id", "le"]),
                            st.one_of(st.sampled_from(["x", "etl"]), st.text(max_size=300)),
                            max_size=4,
                        )
                    ).items()
                ],
            )
            value = draw(st.sampled_from(["int", "double", "none"]))
            if value == "int":
                point.as_int = draw(st.integers(-(2**63), 2**63 - 1))
            elif value == "double":
                point.as_double = draw(doubles)
            if draw(st.integers(0, 4)) == 0:
                point.exemplars.add(as_double=1.0, filtered_attributes=[_kv("tenant_id", "x")])
            points.append(point)
        if draw(st.booleans()):
            monotonic = draw(st.booleans())
            data = m.Sum(data_points=points, aggregation_temporality=2, is_monotonic=monotonic)
            metrics.append(m.Metric(name=name, sum=data))
        else:
            metrics.append(m.Metric(name=name, gauge=m.Gauge(data_points=points)))
    return _request(*metrics)


@pytest.mark.slow
@settings(max_examples=200, database=None, derandomize=True, deadline=None)
@given(request=st.one_of(requests(), _number_requests()))
def test_reading_points_serialized_decides_as_reading_them_as_objects(
    request: ExportMetricsServiceRequest,
) -> None:
    """Gauges' and sums' points are read from their bytes, their attribute checks
    remembered: every decision is the one the protobuf objects give, remembered or not."""
    limits = TenantLimits(
        max_attributes_per_point=3, max_active_series=15, max_attribute_value_length=200
    )
    body = request.SerializeToString()
    decided = []
    for serialized in (False, True, True):  # the second serialized run meets what the first kept
        copy = ExportMetricsServiceRequest.FromString(body)
        rejections = enforce(copy, "acme", limits, ActiveSeries(600), 0.0, serialized=serialized)
        decided.append((rejections.counts, rejections.examples, copy.SerializeToString()))
    assert decided[1] == decided[0]
    assert decided[2] == decided[0]


@pytest.mark.parametrize("count", [1, 256, 257, 1000])
@pytest.mark.parametrize("kind", ["gauge", "sum"])
def test_many_points_are_serialized_in_steps_as_protobuf_serializes_them(
    kind: str, count: int
) -> None:
    points = [
        m.NumberDataPoint(
            as_int=n * 300,
            time_unix_nano=n,
            attributes=[KeyValue(key="k", value=AnyValue(string_value="v" * (n % 200)))],
        )
        for n in range(count)
    ]
    data: m.Gauge | m.Sum = (
        m.Gauge(data_points=points)
        if kind == "gauge"
        else m.Sum(data_points=points, aggregation_temporality=2, is_monotonic=True)
    )
    steps = serialized_points(data)
    taken, result = _driven(steps)
    assert result == data.SerializeToString()
    assert taken == (count // 64 if count > 256 else 0)


def _driven(steps: Any) -> tuple[int, Any]:
    """Run `steps` to their end: how many pauses they made, and their result."""
    taken = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return taken, done.value
        taken += 1
