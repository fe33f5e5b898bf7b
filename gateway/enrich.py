"""Stamp the authenticated tenant on every data point and every resource of a request.

The tenant comes from the credential only. Anything the client wrote that
Prometheus would turn into a `tenant_id` label (`tenant_id`, `tenant.id`,
`Tenant-ID`, ...) is removed from the resource, the scope, every data point and
every exemplar before `tenant_id` is set on each data point and each resource.
The data point's is part of every series' identity; the resource's reaches
`target_info`, so that it too says whose agent it describes.
"""

from __future__ import annotations

import re

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from gateway.tenants import Tenant
from gateway.work import Steps, finish

TENANT_LABEL = "tenant_id"
_NON_LABEL_CHARS = re.compile(r"[^A-Za-z0-9_]")


_SCAN_BYTES = 64 * 1024
"""Bytes looked through per step: lowering 7 MB at once held the event loop 25 ms."""


def may_claim_tenant(serialized: bytes) -> bool:
    """False when a serialized protobuf request cannot hold a tenant claim
    anywhere: then there is nothing to strip (the common case)."""
    return finish(may_claim_tenant_steps(serialized))


def may_claim_tenant_steps(serialized: bytes) -> Steps[bool]:
    """`may_claim_tenant`, a step per `_SCAN_BYTES` (gateway.work)."""
    # Every key that claims the tenant holds these six ASCII letters, in any case,
    # and protobuf carries strings as plain UTF-8 (lower() changes ASCII only).
    # Each window overlaps the next by five bytes: a word across two is seen.
    for start in range(0, max(len(serialized), 1), _SCAN_BYTES):
        if b"tenant" in serialized[start : start + _SCAN_BYTES + 5].lower():
            return True
        yield
    return False


def claims_tenant(key: str) -> bool:
    """True when an attribute key would become the `tenant_id` label in Prometheus."""
    return _NON_LABEL_CHARS.sub("_", key).lower() == TENANT_LABEL


def _strip(attributes: RepeatedCompositeFieldContainer[KeyValue]) -> None:
    if any(claims_tenant(kv.key) for kv in attributes):
        kept = [kv for kv in attributes if not claims_tenant(kv.key)]
        del attributes[:]
        attributes.extend(kept)


def stamp_tenant(
    request: ExportMetricsServiceRequest, tenant: Tenant, *, strip: bool = True
) -> int:
    """Set `tenant_id` on every data point and resource in place; return the data points.

    `strip=False` skips looking for claims: only for a request that
    `may_claim_tenant` has cleared.
    """
    return finish(stamp_steps(request, tenant, strip=strip))


def stamp_steps(
    request: ExportMetricsServiceRequest, tenant: Tenant, *, strip: bool = True
) -> Steps[int]:
    """`stamp_tenant` as steps that may be paused between metrics (gateway.work)."""
    stamp = KeyValue(key=TENANT_LABEL, value=AnyValue(string_value=tenant.id))
    if not strip:
        return (yield from _stamp_only(request, stamp))
    points_seen = 0
    for resource_metrics in request.resource_metrics:
        _strip(resource_metrics.resource.attributes)
        resource_metrics.resource.attributes.append(stamp)
        for scope_metrics in resource_metrics.scope_metrics:
            _strip(scope_metrics.scope.attributes)
            for metric in scope_metrics.metrics:
                yield
                kind = metric.WhichOneof("data")
                if kind is None:
                    continue
                for point in getattr(metric, kind).data_points:
                    if not points_seen & 0xFF:
                        yield
                    _strip(point.attributes)
                    point.attributes.append(stamp)
                    for exemplar in getattr(point, "exemplars", ()):
                        _strip(exemplar.filtered_attributes)
                    points_seen += 1
    return points_seen


def _stamp_only(request: ExportMetricsServiceRequest, stamp: KeyValue) -> Steps[int]:
    points_seen = 0
    for resource_metrics in request.resource_metrics:
        resource_metrics.resource.attributes.append(stamp)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                yield
                kind = metric.WhichOneof("data")
                if kind is not None:
                    for point in getattr(metric, kind).data_points:
                        point.attributes.append(stamp)
                        points_seen += 1
    return points_seen
