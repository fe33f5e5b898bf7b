"""What the fleet reads of a request: an agent's resource, bounded, and its overflow series.

Where this sits: gateway chain ──(each accepted request)──▶ fleet table (gateway.fleet)
──▶ /api/fleet, /status, the fleet series (gateway.fleet.series).

A row keeps a copy of its agent's resource for its fleet series. A resource may hold
tens of thousands of attributes: only the identity keys and the first few others
are read, and the copy is cut to the fleet's bounds, so that one agent can swell
neither the state file nor the fleet's exports.

An SDK past its cardinality limit folds further attribute sets into one series
marked `otel.metric.overflow=true`; the fleet shows the agent "over budget".
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Mapping

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import ResourceMetrics

from gateway.enrich import TENANT_LABEL, claims_tenant

MAX_VALUE_CHARS = 128
"""Longer service names, instance ids, versions and hosts are cut: they become label values."""

AGENT_TYPE_KEY = "agent.type"
LIFECYCLE_KEY = "otel_agents.state"
"""Resource attribute of an agent's final export after a clean stop (value "stopped")."""

IDENTITY_KEYS = (
    "service.name",
    "service.namespace",
    "service.instance.id",
    AGENT_TYPE_KEY,
    "host.name",
    "service.version",
)
"""Resource attributes a fleet row always keeps: its series' job, instance and labels."""
_PLAIN_KEY = re.compile(r"[A-Za-z][A-Za-z0-9._/-]*")
"""Keys the fleet republishes: ones that become a valid, distinct label in Prometheus."""

OVERFLOW_KEY = "otel.metric.overflow"
"""The attribute (value true) of the series an SDK makes past its cardinality limit."""
_OVERFLOW_BYTES = OVERFLOW_KEY.encode()

_ALWAYS_READ = frozenset((*IDENTITY_KEYS, LIFECYCLE_KEY))


def resource_strings(attributes: Iterable[KeyValue], others: int) -> dict[str, str]:
    """The string attributes a row may keep: the identity keys, the lifecycle notice and
    the first `others` other attributes. The rest's values are never read: a resource
    may hold tens of thousands (reading each costs about a microsecond)."""
    found: dict[str, str] = {}
    for kv in attributes:
        key = kv.key
        if key not in _ALWAYS_READ:
            if others <= 0:
                continue
            others -= 1
        value = kv.value
        if value.WhichOneof("value") == "string_value":
            found[key] = value.string_value
    return found


def kept_resource(
    attributes: Mapping[str, str], tenant_id: str, max_attributes: int, max_bytes: int
) -> dict[str, str]:
    """What a row keeps of a resource: the identity keys, then other plain keys in
    order while they fit `max_attributes` and `max_bytes` (keys and values, UTF-8);
    values cut to MAX_VALUE_CHARS, tenant claims left out, `tenant_id` stamped."""
    kept = {TENANT_LABEL: tenant_id}
    size = len(TENANT_LABEL) + len(tenant_id.encode())
    for key in IDENTITY_KEYS:
        if key in attributes:
            kept[key] = attributes[key][:MAX_VALUE_CHARS]
            size += len(key) + len(kept[key].encode())
    for key, value in attributes.items():
        if len(kept) >= max_attributes:
            break
        if (
            key in kept
            or key == LIFECYCLE_KEY
            or len(key) > MAX_VALUE_CHARS
            or _PLAIN_KEY.fullmatch(key) is None
            or claims_tenant(key)
        ):
            continue
        value = value[:MAX_VALUE_CHARS]
        cost = len(key) + len(value.encode())
        if size + cost <= max_bytes:
            kept[key], size = value, size + cost
    return kept


def may_overflow(request: ExportMetricsServiceRequest, raw: bytes | None) -> bool:
    """False when `request` (serialized as `raw`, if given) holds no overflow series:
    a byte search, 3 µs for 500 points (serializing a request decoded from JSON first
    costs 70 µs, a seventh of walking its points)."""
    return _OVERFLOW_BYTES in (request.SerializeToString() if raw is None else raw)


def overflowing(resource_metrics: ResourceMetrics) -> tuple[str, ...]:
    """Names of the metrics with a point marked `otel.metric.overflow` (true)."""
    names: list[str] = []
    for scope_metrics in resource_metrics.scope_metrics:
        for metric in scope_metrics.metrics:
            kind = metric.WhichOneof("data")
            if kind is None:
                continue
            if any(
                kv.key == OVERFLOW_KEY
                and (kv.value.bool_value or kv.value.string_value.lower() == "true")
                for point in getattr(metric, kind).data_points
                for kv in point.attributes
            ):
                names.append(metric.name[:MAX_VALUE_CHARS])
    return tuple(names)


STARTS_PER_REQUEST = 2
"""Metrics whose first cumulative point is read per request (a few µs each), and
whose start times a fleet row keeps (gateway.fleet.processes)."""
_CUMULATIVE = 2  # AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE


def series_starts(
    resource_metrics: ResourceMetrics, limit: int = STARTS_PER_REQUEST
) -> tuple[tuple[str, int], ...]:
    """(series, start time) of the first cumulative point of each metric, for at most
    `limit` metrics. A process keeps one start time per series for its whole life; a
    second process sending the same series under the same identity has its own."""
    found: list[tuple[str, int]] = []
    for scope_metrics in resource_metrics.scope_metrics:
        for metric in scope_metrics.metrics:
            if len(found) >= limit:
                return tuple(found)
            kind = metric.WhichOneof("data")
            if kind not in ("sum", "histogram", "exponential_histogram"):
                continue
            data = getattr(metric, kind)
            if data.aggregation_temporality != _CUMULATIVE or not data.data_points:
                continue
            point = data.data_points[0]
            if point.start_time_unix_nano:
                labels = b"".join(kv.SerializeToString() for kv in point.attributes)
                key = zlib.crc32(labels, zlib.crc32(metric.name.encode()))
                found.append((f"{key:08x}", point.start_time_unix_nano))
    return tuple(found)
