"""Drop the data points a tenant may not send, keep the rest: the `points` reasons.

Every data point is checked in the order of the rejection table
(gateway/errors.py) and the first failing check names its reason. Dropped
points are removed from the request in place and summed up in `Rejections`,
which becomes the OTLP response's `partial_success`. One pass, linear in the
number of points and attributes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from gateway.enrich import claims_tenant
from gateway.errors import REASONS
from gateway.limits import TenantLimits
from gateway.series import ActiveSeries, series_key
from gateway.values import metric_problem, number_problem, point_problem

_NON_LABEL_CHARS = re.compile(r"[^A-Za-z0-9_]")
# Labels the Collector's exporter adds itself: an attribute of the same name
# would make a duplicate label and the whole metric would be dropped there.
_RESERVED_LABELS = frozenset({"job", "instance", "le", "quantile"})
_RESERVED_PREFIXES = ("__", "otel_scope_")
# Resource attributes that become the job and instance labels of every series.
_LABEL_RESOURCE_KEYS = ("service.name", "service.namespace", "service.instance.id")
_SHOWN_CHARS = 60
_NUMBER_KINDS = frozenset({"gauge", "sum"})


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


def shown(text: str) -> str:
    """A client-supplied string quoted and cut short for a message."""
    cut = text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."
    return repr(cut)


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


Problem = tuple[str, str]
"""A reason id and the detail shown to the client."""

_Key = tuple[bool, str, Problem | None]
"""Of an attribute key: is it a tenant claim (removed, never checked), its
Prometheus label, and what is wrong with it."""


class _Checker:
    """The checks of one request for one tenant.

    The hot path is one pass over each point's attributes; what a key is gets
    computed once per request.
    """

    def __init__(
        self, tenant_id: str, limits: TenantLimits, series: ActiveSeries, now: float
    ) -> None:
        self.tenant_id, self.limits, self.series, self.now = tenant_id, limits, series, now
        self._keys: dict[str, _Key] = {}
        self._name_matches, self._key_matches = limits.matchers()

    def key(self, key: str) -> _Key:
        """What `key` is, computed once per request."""
        known = self._keys.get(key)
        if known is None:
            label = _NON_LABEL_CHARS.sub("_", key)
            problem: Problem | None = None
            claim = claims_tenant(key)
            if claim:
                pass
            elif label in _RESERVED_LABELS or label.startswith(_RESERVED_PREFIXES):
                problem = ("attribute_key_not_allowed", f"attribute key {shown(key)} is reserved")
            elif self._key_matches(key) is None:
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

    def metric(self, name: str, kind: str, data: Any) -> Problem | None:
        """Problems shared by every point of a metric: its name and temporality."""
        if self._name_matches(name) is None:
            return (
                "metric_name_not_allowed",
                f"metric {shown(name)} does not match metric_name_patterns",
            )
        problem = metric_problem(kind, data)
        return None if problem is None else ("invalid_value", f"metric {shown(name)}: {problem}")

    def point(
        self, kind: str, data: Any, point: Any, scope: _Scope, name: str, service: tuple[str, str]
    ) -> Problem | None:
        """Value, attributes, then series of one data point (the table's order)."""
        if kind in _NUMBER_KINDS and point.WhichOneof("value") == "as_int":
            # The common case, checked inline: integers are finite.
            if point.as_int < 0 and kind == "sum" and data.is_monotonic:
                return ("invalid_value", number_problem(point, monotonic=True) or "")
        else:
            value_problem = point_problem(kind, data, point)
            if value_problem is not None:
                return ("invalid_value", value_problem)
        # Scope attributes become otel_scope_* labels: they cannot collide with these.
        pairs, problem = self.scan(point.attributes)
        limit = self.limits.max_attributes_per_point
        count = len(pairs) + scope.attribute_count
        if limit and count > limit:
            return (
                "attribute_limit",
                f"{count} attributes on a data point, limit max_attributes_per_point={limit}",
            )
        return problem or self.series_admitted(name, pairs, service)

    def series_admitted(
        self, name: str, pairs: list[tuple[str, Any]], service: tuple[str, str]
    ) -> Problem | None:
        """Count the point's series as active; a problem when it is new and over the limit."""
        limit = self.limits.max_active_series
        if not limit:
            return None
        if self.series.admit(self.tenant_id, series_key(name, pairs, service), limit, self.now):
            return None
        return (
            "series_limit",
            f"tenant {self.tenant_id!r} has {limit} active series (limit max_active_series="
            f"{limit}); new series are refused until others are idle for "
            f"{self.series.window_seconds:g} s",
        )


@dataclass
class _Scope:
    """What a scope adds to each of its points: attributes, and a problem they all share."""

    attribute_count: int
    problem: Problem | None


def _resource_problem(attributes: Iterable[KeyValue], max_length: int) -> Problem | None:
    for kv in attributes:
        if kv.key in _LABEL_RESOURCE_KEYS and max_length and kv.value.ByteSize() > max_length:
            return (
                "attribute_value_too_long",
                f"resource attribute {kv.key} is over max_attribute_value_length={max_length}",
            )
    return None


def _service(attributes: Iterable[KeyValue]) -> tuple[str, str]:
    found = {kv.key: kv.value.string_value for kv in attributes}
    return found.get("service.name", ""), found.get("service.instance.id", "")


def enforce(
    request: ExportMetricsServiceRequest,
    tenant_id: str,
    limits: TenantLimits,
    series: ActiveSeries,
    now: float,
) -> Rejections:
    """Remove from `request` every data point that breaks a limit or is invalid."""
    rejections = Rejections()
    checker = _Checker(tenant_id, limits, series, now)
    for resource_metrics in request.resource_metrics:
        resource = resource_metrics.resource.attributes
        resource_problem = _resource_problem(resource, limits.max_attribute_value_length)
        service = _service(resource)
        for scope_metrics in resource_metrics.scope_metrics:
            pairs, scope_problem = checker.scan(scope_metrics.scope.attributes)
            scope = _Scope(len(pairs), resource_problem or scope_problem)
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                if kind is None:
                    continue  # no points: nothing to check or forward
                data = getattr(metric, kind)
                name = metric.name
                shared = scope.problem or checker.metric(name, kind, data)
                kept = []
                check = checker.point
                for point in data.data_points:
                    problem = shared or check(kind, data, point, scope, name, service)
                    if problem is None:
                        kept.append(point)
                    else:
                        rejections.add(*problem)
                if len(kept) != len(data.data_points):
                    # Rebuilt once rather than deleted one by one: no quadratic shifting.
                    del data.data_points[:]
                    data.data_points.extend(kept)
    return rejections
