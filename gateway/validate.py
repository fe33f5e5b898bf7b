"""Drop the data points a tenant may not send, keep the rest: the `points` reasons.

Every data point is checked in the order of the rejection table
(gateway/errors.py) and the first failing check names its reason. Dropped
points are removed from the request in place and summed up in `Rejections`,
which becomes the OTLP response's `partial_success`. One pass, linear in the
number of points and attributes. A resource or a scope over its own limits
(gateway.labels) leaves the request with all its points; each metric's name is
checked against the namespace all tenants share (gateway.namespace).

Agents send the same series again and again: only values and timestamps change.
A gauge's or counter's point is therefore looked at in its serialized form: its
fixed-width fields (times, value) come first and are read there, and the rest,
its attributes exactly as sent, is the key under which what the attribute checks
found is remembered (per limits, as they decide it). Reading attributes through
protobuf objects costs microseconds per point; a point seen before costs a
fraction of that.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric

from gateway.enrich import claims_tenant
from gateway.errors import REASONS, TooManyDataPoints
from gateway.labels import Problem, key_problem, label_name, resource_problem, shown
from gateway.limits import TenantLimits
from gateway.namespace import MetricNamespace
from gateway.series import (
    ActiveSeries,
    attributes_hash,
    series_id,
    series_key,
    stable_attributes_hash,
)
from gateway.values import metric_problem, number_problem, point_problem
from gateway.work import Steps, finish

_NUMBER_KINDS = frozenset({"gauge", "sum"})
# A serialized NumberDataPoint starts with its fixed-width fields, in field order:
# start_time_unix_nano (2), time_unix_nano (3), as_double (4), as_int (6), each a
# tag byte and 8 little-endian bytes; exemplars (5) would come before as_int.
_POINTS = 0x0A  # field 1 of Gauge and Sum, length-delimited
_AS_DOUBLE, _AS_INT, _EXEMPLARS = 0x21, 0x31, 0x2A
_VALUES = frozenset({_AS_DOUBLE, _AS_INT})
_FIXED = frozenset({0x11, 0x19, _AS_DOUBLE, _AS_INT})
_STEP_POINTS = 0x3F  # a pause point every 64 points (gateway.work),
_LONG_POINT_BYTES = 1024  # and after every long one
CONTAINERS_PER_POINT = 4
"""Resources, scopes and metrics a request may hold per allowed data point."""
_CLAIMS_ALLOWED = 8  # tenant claims are removed, not counted: a few may come on top
SWOLLEN_BYTES_PER_POINT = 16 * 1024
"""Bytes per data point above which a request is looked at for swollen points
first: a point within the limits takes a few KiB at most."""
REMEMBERED_ATTRIBUTE_LISTS = 16_384
"""Attribute lists remembered per limits; past it the memory starts over."""
REMEMBERED_BYTES = 512
"""Longer attribute lists are checked every time rather than remembered."""


def count_points(request: ExportMetricsServiceRequest) -> int:
    """Data points in `request` (cost: one step per metric)."""
    total = 0
    for resource_metrics in request.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                if kind is not None:
                    total += len(getattr(metric, kind).data_points)
    return total


def bounded_count(request: ExportMetricsServiceRequest, limit: int) -> int:
    """Data points in `request`, counted in at most `CONTAINERS_PER_POINT` x `limit`
    steps (resources, scopes, metrics): past them, TooManyDataPoints, or the
    points counted so far when they are over `limit` already."""
    if not limit:
        return count_points(request)
    budget = CONTAINERS_PER_POINT * limit
    visited = points = 0
    for resource_metrics in request.resource_metrics:
        visited += 1
        for scope_metrics in resource_metrics.scope_metrics:
            visited += 1
            for metric in scope_metrics.metrics:
                visited += 1
                kind = metric.WhichOneof("data")
                if kind is not None:
                    points += len(getattr(metric, kind).data_points)
                if visited > budget:
                    break
            if visited > budget:
                break
        if visited > budget:
            if points > limit:
                return points
            raise TooManyDataPoints(
                f"over {budget} resources, scopes and metrics in one request "
                f"({CONTAINERS_PER_POINT} per data point allowed by "
                f"max_data_points_per_request={limit}); send smaller batches "
                "(max_export_batch_size in the OpenTelemetry SDK)"
            )
    return points


@dataclass
class Rejections:
    """Points dropped from one request: a count and a first example per reason."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """All dropped points."""
        return sum(self.counts.values())

    def add(self, reason: str, detail: str, points: int = 1) -> None:
        """Count `points` dropped for `reason`; the first detail per reason is kept."""
        self.counts[reason] = self.counts.get(reason, 0) + points
        self.examples.setdefault(reason, detail)

    def message(self, sent: int) -> str:
        """The partial_success error_message: each reason, an example, the setting."""
        parts = []
        for reason, count in self.counts.items():
            setting = REASONS[reason].setting
            hint = f" (setting: {setting})" if setting else ""
            parts.append(f"{reason}: {count} ({self.examples[reason]}){hint}")
        return f"{self.total} of {sent} data points rejected; " + "; ".join(parts)


_Key = tuple[bool, str, Problem | None]
"""Of an attribute key: is it a tenant claim (removed, never checked), its
Prometheus label, and what is wrong with it."""

_Checked = tuple[int, Problem | None, int, int]
"""Of a data point's attribute list: how many count against the attribute limit,
its first problem, its `attributes_hash`, and its `stable_attributes_hash` with a
shared store (else 0)."""


class _Checker:
    """The checks of one request for one tenant.

    The hot path is one pass over each point's attributes; what a key is gets
    computed once per request.
    """

    def __init__(
        self,
        tenant_id: str,
        limits: TenantLimits,
        series: ActiveSeries,
        now: float,
        namespace: MetricNamespace | None = None,
    ) -> None:
        self.tenant_id, self.limits, self.series, self.now = tenant_id, limits, series, now
        self.namespace = namespace
        self._keys: dict[str, _Key] = {}
        compiled = limits.compiled()
        self._name_matches, self._key_matches = compiled.metric_name, compiled.attribute_key
        self._checked: dict[bytes, _Checked] = compiled.checked
        self._attribute_limit = limits.max_attributes_per_point
        self._series_limit = limits.max_active_series
        self._seen = series.of(tenant_id)

    def key(self, key: str) -> _Key:
        """What `key` is, computed once per request."""
        known = self._keys.get(key)
        if known is None:
            label, problem = "", None
            claim = claims_tenant(key)
            if not claim:
                label, problem = key_problem(key, self.limits.max_attribute_key_length)
            if problem is None and not claim and self._key_matches(key) is None:
                problem = (
                    "attribute_key_not_allowed",
                    f"attribute key {shown(key)} does not match attribute_key_patterns",
                )
            known = self._keys[key] = (claim, label, problem)
        return known

    def scan(self, attributes: Iterable[KeyValue]) -> tuple[list[tuple[str, Any]], Problem | None]:
        """The (key, value) pairs of an attribute list, claims left out, and its first problem."""
        max_length = self.limits.max_attribute_value_length
        pairs: list[tuple[str, Any]] = []
        labels: set[str] = set()
        problem: Problem | None = None
        for kv in attributes:
            key = kv.key
            claim, label, key_problem = self._keys.get(key) or self.key(key)
            if claim:
                continue
            value = kv.value  # each access builds a wrapper: once
            if value.WhichOneof("value") == "string_value":
                identity: Any = value.string_value
                length = len(identity)
            else:
                # Other values become their string or JSON form in Prometheus:
                # the encoded size is a fair, cheap measure.
                identity = value.SerializeToString(deterministic=True)
                length = len(identity)
            pairs.append((key, identity))
            if problem is not None:
                continue  # still counting, for the attribute limit
            if key_problem is not None:
                problem = key_problem
            elif label in labels:
                problem = (
                    "attribute_key_not_allowed",
                    f"attribute key {shown(key)} repeats label {label!r} in Prometheus",
                )
            elif max_length and length > max_length:
                problem = (
                    "attribute_value_too_long",
                    f"value of {shown(key)} has {length} characters, "
                    f"limit max_attribute_value_length={max_length}",
                )
            labels.add(label)
        return pairs, problem

    def metric(self, metric: Metric, kind: str, data: Any) -> Problem | None:
        """Problems shared by every point of a metric: its name, then its temporality."""
        name = metric.name
        if self._name_matches(name) is None:
            return (
                "metric_name_not_allowed",
                f"metric {shown(name)} does not match metric_name_patterns",
            )
        if self.namespace is not None:
            problem = self.namespace.check(
                metric, kind, data, self.now, self.tenant_id, self.limits.max_metric_names
            )
            if problem is not None:
                return problem
        value_problem = metric_problem(kind, data)
        if value_problem is None:
            return None
        return ("invalid_value", f"metric {shown(name)}: {value_problem}")

    def metrics(
        self,
        metrics: Iterable[Metric],
        scope: _Scope,
        service: tuple[str, str],
        rejections: Rejections,
        serialized: bool,
    ) -> Steps[None]:
        """Check the metrics of one scope, removing the points that fail; pausing
        between metrics and every 64 points (gateway.work)."""
        for metric in metrics:
            yield
            kind = metric.WhichOneof("data")
            if kind is None:
                continue  # no points: nothing to check or forward
            data = getattr(metric, kind)
            name = metric.name
            shared = self.metric(metric, kind, data)
            if serialized and shared is None and kind in _NUMBER_KINDS:
                monotonic = kind == "sum" and data.is_monotonic
                yield from self.number_points(data, monotonic, scope, name, service, rejections)
                continue
            kept = []
            check = self.point
            for index, point in enumerate(data.data_points, 1):
                problem = shared or check(kind, data, point, scope, name, service)
                if problem is None:
                    kept.append(point)
                else:
                    rejections.add(*problem)
                if not index & _STEP_POINTS:
                    yield
            if len(kept) != len(data.data_points):
                # Rebuilt once rather than deleted one by one: no quadratic shifting.
                del data.data_points[:]
                data.data_points.extend(kept)

    def point(
        self, kind: str, data: Any, point: Any, scope: _Scope, name: str, service: tuple[str, str]
    ) -> Problem | None:
        """Value, attributes, then series of one data point (the table's order)."""
        value_problem = point_problem(kind, data, point)
        if value_problem is not None:
            return ("invalid_value", value_problem)
        return self.attributes_then_series(self.check_attributes(point), scope, name, service)

    def check_attributes(self, point: Any) -> _Checked:
        """What the attribute checks find in a point's attributes."""
        attributes = point.attributes
        limit = self._attribute_limit
        if limit and len(attributes) > limit + _CLAIMS_ALLOWED:
            # Over the limit whatever they are: not read one by one (a point of
            # 60,000 attributes would hold the loop 100 ms).
            return (len(attributes), None, 0, 0)
        # Scope attributes become otel_scope_* labels: they cannot collide with these.
        pairs, problem = self.scan(attributes)
        stable = stable_attributes_hash(pairs) if self.series.shared else 0
        return (len(pairs), problem, attributes_hash(pairs), stable)

    def number_points(
        self,
        data: Any,
        monotonic: bool,
        scope: _Scope,
        name: str,
        service: tuple[str, str],
        rejections: Rejections,
    ) -> Steps[None]:
        """`point` for every point of a gauge or a sum, read from its serialized form;
        the points that fail are removed from `data`."""
        raw = yield from serialized_points(data)
        at, end, index = 0, len(raw), 0
        kept: list[tuple[int, int]] = []
        dropped = False
        remembered = self._checked
        # The points come first (field 1), each a length-delimited NumberDataPoint.
        while at < end and raw[at] == _POINTS:
            length, start = raw[at + 1], at + 2
            if length & 0x80:
                length, start = _varint(raw, at + 1)
            stop = start + length
            # Its fixed-width fields first: the times and the value.
            value_tag = value_at = 0
            while start < stop and raw[start] in _FIXED:
                if raw[start] in _VALUES:
                    value_tag, value_at = raw[start], start + 1
                start += 9
            problem: Problem | None = None
            if start < stop and raw[start] == _EXEMPLARS:
                kind = "sum" if monotonic else "gauge"
                point = data.data_points[index]
                problem = self.point(kind, _Sum(monotonic), point, scope, name, service)
            else:
                if _suspect(raw, value_tag, value_at, monotonic):
                    value_problem = number_problem(data.data_points[index], monotonic)
                    if value_problem is not None:
                        problem = ("invalid_value", value_problem)
                if problem is None:
                    # What is left once times and value are read: attributes and flags.
                    attributes = raw[start:stop]
                    checked = remembered.get(attributes)
                    if checked is None:
                        checked = self.check_attributes(data.data_points[index])
                        if len(attributes) <= REMEMBERED_BYTES:
                            if len(remembered) >= REMEMBERED_ATTRIBUTE_LISTS:
                                remembered.clear()
                            remembered[attributes] = checked
                    problem = self.attributes_then_series(checked, scope, name, service)
            if problem is None:
                kept.append((at, stop))
            else:
                rejections.add(*problem)
                dropped = True
            at, index = stop, index + 1
            if not index & _STEP_POINTS or length > _LONG_POINT_BYTES:
                yield
        if dropped:
            # Rebuilt once from the kept points' bytes: no quadratic shifting.
            data.ParseFromString(b"".join([raw[a:b] for a, b in kept] + [raw[at:]]))

    def attributes_then_series(
        self, checked: _Checked, scope: _Scope, name: str, service: tuple[str, str]
    ) -> Problem | None:
        """The attribute limit, the attributes' own problem, then the series limit."""
        count, problem, attributes, stable = checked
        limit = self._attribute_limit
        count += scope.attribute_count
        if limit and count > limit:
            return (
                "attribute_limit",
                f"{count} attributes on a data point, limit max_attributes_per_point={limit}",
            )
        if problem is not None:
            return problem
        limit = self._series_limit
        if not limit:
            return None
        key = series_key(name, attributes, service)
        seen = self._seen
        if key in seen:  # a known series: the common case, without a call
            seen[key] = self.now
            seen.move_to_end(key)
            return None
        if self.series.admit(
            self.tenant_id, key, limit, self.now, lambda: series_id(name, stable, service)
        ):
            return None
        return (
            "series_limit",
            f"tenant {self.tenant_id!r} has {limit} active series (limit max_active_series="
            f"{limit}); new series are refused until others are idle for "
            f"{self.series.window_seconds:g} s",
        )


def _suspect(raw: bytes, value_tag: int, value_at: int, monotonic: bool) -> bool:
    """Whether a number point's value, read in place, may be refused: NaN or an
    infinity, below zero for a counter, or no value at all."""
    if value_tag == _AS_INT:
        # Integers are finite; a counter's must not be negative (the sign bit).
        return monotonic and raw[value_at + 7] & 0x80 != 0
    if value_tag == _AS_DOUBLE:
        high = raw[value_at + 7]
        # All exponent bits set: NaN or an infinity; the sign bit: maybe below 0.
        return (high & 0x7F == 0x7F and raw[value_at + 6] & 0xF0 == 0xF0) or (
            monotonic and high & 0x80 != 0
        )
    return True  # no value: fine only when flagged "no recorded value"


def serialized_points(data: Any) -> Steps[bytes]:
    """`data.SerializeToString()` of a gauge or a sum; one with many points a step
    per 64 of them (serialized whole, 10,000 points held the event loop 5-18 ms)."""
    points = data.data_points
    if len(points) <= 4 * (_STEP_POINTS + 1):
        return data.SerializeToString()  # type: ignore[no-any-return]
    parts = []
    for index, point in enumerate(points, 1):
        body = point.SerializeToString()
        parts.append(_length_prefix(len(body)))
        parts.append(body)
        if not index & _STEP_POINTS:
            yield
    # The fields after the points (a sum's temporality and monotonicity: scalars),
    # in field order, as protobuf writes them.
    rest = type(data)()
    for descriptor, value in data.ListFields():
        if descriptor.number != 1:
            setattr(rest, descriptor.name, value)
    parts.append(rest.SerializeToString())
    return b"".join(parts)


def _length_prefix(length: int) -> bytes:
    """The tag of a point (field 1, length-delimited) and its length, as a varint."""
    prefix = bytearray((_POINTS,))
    while length > 0x7F:
        prefix.append(length & 0x7F | 0x80)
        length >>= 7
    prefix.append(length)
    return bytes(prefix)


def _varint(raw: bytes, at: int) -> tuple[int, int]:
    """The varint at `at` and where it ends."""
    value, shift = 0, 0
    while True:
        byte = raw[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7


@dataclass(frozen=True)
class _Sum:
    """What `point_problem` reads of a gauge or sum (gauges are never monotonic)."""

    is_monotonic: bool


@dataclass
class _Scope:
    """What a scope adds to each of its points: its attributes."""

    attribute_count: int


# Scope attributes become `otel_scope_<key>` labels beside the exporter's own
# otel_scope_name, otel_scope_version and otel_scope_schema_url (for which it
# skips the keys `name`, `version`, `schema_url` themselves).
_SCOPE_LABELS = frozenset({"name", "version", "schema_url"})


def _scope_problem(pairs: list[tuple[str, Any]], limits: TenantLimits) -> Problem | None:
    limit = limits.max_attributes_per_scope
    if limit and len(pairs) > limit:
        return (
            "attribute_limit",
            f"{len(pairs)} attributes on an instrumentation scope, limit "
            f"max_attributes_per_scope={limit}",
        )
    for key, _ in pairs:
        if key not in _SCOPE_LABELS and label_name(key) in _SCOPE_LABELS:
            return (
                "attribute_key_not_allowed",
                f"scope attribute key {shown(key)} becomes the exporter's own "
                f"otel_scope_{label_name(key)} label: rename it",
            )
    return None


def _points(metrics: Iterable[Metric]) -> int:
    total = 0
    for metric in metrics:
        kind = metric.WhichOneof("data")
        if kind is not None:
            total += len(getattr(metric, kind).data_points)
    return total


def _delete(items: Any, indexes: list[int]) -> None:
    """Delete `items[i]` for each of the ascending `indexes`: from the end, one by
    one, so that none of the (maybe large) rest is copied."""
    for index in reversed(indexes):
        del items[index]


def _service(attributes: Iterable[KeyValue]) -> tuple[str, str]:
    found = {kv.key: kv.value.string_value for kv in attributes}
    return found.get("service.name", ""), found.get("service.instance.id", "")


def enforce(
    request: ExportMetricsServiceRequest,
    tenant_id: str,
    limits: TenantLimits,
    series: ActiveSeries,
    now: float,
    *,
    namespace: MetricNamespace | None = None,
    serialized: bool = True,
) -> Rejections:
    """Remove from `request` every data point that breaks a limit or is invalid, and
    every resource and scope over its own limits (with all their points).

    `namespace`: the gateway's table of metric names in use, checked per metric.
    `serialized=False` reads every point through protobuf objects instead: the
    reference the tests hold the serialized reading to.
    """
    return finish(
        enforce_steps(
            request, tenant_id, limits, series, now, namespace=namespace, serialized=serialized
        )
    )


def _drop_swollen(
    request: ExportMetricsServiceRequest, limit: int, rejections: Rejections
) -> Steps[None]:
    for resource_metrics in request.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                yield
                kind = metric.WhichOneof("data")
                if kind is None:
                    continue
                points = getattr(metric, kind).data_points
                kept = [p for p in points if len(p.attributes) <= limit + _CLAIMS_ALLOWED]
                if len(kept) == len(points):
                    continue
                for point in points:
                    count = len(point.attributes)
                    if count > limit + _CLAIMS_ALLOWED:
                        rejections.add(
                            "attribute_limit",
                            f"{count} attributes on a data point, "
                            f"limit max_attributes_per_point={limit}",
                        )
                del points[:]
                points.extend(kept)


def enforce_steps(
    request: ExportMetricsServiceRequest,
    tenant_id: str,
    limits: TenantLimits,
    series: ActiveSeries,
    now: float,
    *,
    namespace: MetricNamespace | None = None,
    serialized: bool = True,
    swollen: bool = False,
) -> Steps[Rejections]:
    """`enforce` as steps that may be paused between points (gateway.work).

    `swollen`: the request is far larger than its points need (see
    `SWOLLEN_BYTES_PER_POINT`); points with far too many attributes are
    dropped first, before any metric is serialized for its checks.
    """
    rejections = Rejections()
    checker = _Checker(tenant_id, limits, series, now, namespace)
    if swollen and limits.max_attributes_per_point:
        yield from _drop_swollen(request, limits.max_attributes_per_point, rejections)
    resources = request.resource_metrics
    refused: list[int] = []
    for r, resource_metrics in enumerate(resources):
        yield
        problem = resource_problem(resource_metrics.resource, limits)
        if problem is not None:
            points = sum(_points(scope.metrics) for scope in resource_metrics.scope_metrics)
            rejections.add(*problem, points=points)
            refused.append(r)
            continue
        service = _service(resource_metrics.resource.attributes)
        scopes = resource_metrics.scope_metrics
        refused_scopes: list[int] = []
        for s, scope_metrics in enumerate(scopes):
            yield
            pairs, problem = checker.scan(scope_metrics.scope.attributes)
            problem = problem or _scope_problem(pairs, limits)
            if problem is not None:
                rejections.add(*problem, points=_points(scope_metrics.metrics))
                refused_scopes.append(s)
                continue
            scope = _Scope(len(pairs))
            yield from checker.metrics(
                scope_metrics.metrics, scope, service, rejections, serialized
            )
        _delete(scopes, refused_scopes)
    _delete(resources, refused)
    return rejections
