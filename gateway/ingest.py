"""The middle of the request path: limits → validate → observe → stamp the tenant → forward.

The chain (gateway.chain) authenticates first and hands over a `Tenant` and the
request; nothing here knows about gRPC servers or HTTP.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from google.protobuf.message import DecodeError
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from gateway.enrich import may_claim_tenant_steps, stamp_steps
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    RateLimited,
    RequestTooLarge,
    TooManyDataPoints,
)
from gateway.limits import Limits, TenantLimits
from gateway.namespace import MetricNamespace
from gateway.ratelimit import RateLimiter
from gateway.series import ActiveSeries
from gateway.telemetry import GatewayMetrics
from gateway.tenants import Tenant
from gateway.usage import Usage
from gateway.validate import SWOLLEN_BYTES_PER_POINT, Rejections, bounded_count, enforce_steps
from gateway.work import Steps, Work, WorkBudget

logger = logging.getLogger(__name__)

SMALL_REQUEST_POINTS = 64
SMALL_REQUEST_BYTES = 64 * 1024
"""A protobuf request of at most these points and bytes is checked and stamped in
one go: a fraction of a millisecond, not worth a turn."""


class Forwarder(Protocol):
    """Where accepted requests go (the Collector, or a fake in unit tests)."""

    async def forward(
        self, request: ExportMetricsServiceRequest
    ) -> ExportMetricsServiceResponse: ...


class RequestObserver(Protocol):
    """Told about every request that passed its tenant's limits, before it is forwarded
    (fleet status: an agent whose data the Collector cannot take is alive all the same).
    It may remove attributes meant for the gateway only. `raw` is the protobuf the
    request was decoded from, when there is one (a quick search in it can spare a walk
    through every point)."""

    def request_steps(
        self, tenant: Tenant, request: ExportMetricsServiceRequest, raw: bytes | None = None
    ) -> Steps[None]:
        """Its work on one request, as steps (gateway.work): charged to the tenant."""
        ...


class Ingestor:
    """Accepts one tenant's OTLP request and forwards what its limits allow.

    The chain calls, in order: `admit` (before the body is read: rate and declared
    size), the transport's decoding (`decode_protobuf` for protobuf), then `ingest`
    (data points: count, validity, attributes, series; the answer carries
    `partial_success` when some points were dropped).
    """

    def __init__(
        self,
        forwarder: Forwarder,
        metrics: GatewayMetrics,
        max_request_bytes: int,
        observers: Sequence[RequestObserver] = (),
        *,
        limits: Limits | None = None,
        namespace: MetricNamespace | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._forwarder = forwarder
        self.namespace = namespace if namespace is not None else MetricNamespace()
        """The metric names in use, shared by every tenant (gateway.namespace)."""
        self._metrics = metrics
        self._clock = clock
        self.observers = list(observers)
        self.usage = Usage()
        """Each tenant's requests, points and refusals, for /api/usage (gateway.usage)."""
        if limits is None:
            limits = Limits(TenantLimits(max_request_bytes=max_request_bytes))
        self.use_limits(limits)

    def use_limits(self, limits: Limits) -> None:
        """Enforce `limits` from now on (starting with full rate buckets, no series)."""
        self.limits = limits
        self.rate = RateLimiter(self._clock)
        self.work = WorkBudget(self._clock)
        self.series = ActiveSeries(limits.series_window_seconds)

    def observe_active_series(self, options: CallbackOptions) -> Iterable[Observation]:
        """Active series per tenant: the `gateway.active_series` gauge's callback."""
        del options
        counts = self.series.counts(self._clock())
        return [Observation(count, {"tenant_id": tenant}) for tenant, count in counts.items()]

    def active_series(self, tenant_id: str) -> int:
        """Active series of `tenant_id` in every process sharing the state (gateway.state)."""
        return self.series.count(tenant_id, self._clock()) + self.series.others.get(tenant_id, 0)

    def admit(self, tenant: Tenant, body_bytes: int, work: Work | None = None) -> TenantLimits:
        """Refuse a request before its body is read: its tenant's rate, its work
        budget, then its size (as far as it is known); the tenant's limits. `work`
        is charged to the tenant's budget from now on."""
        limits = self.limits.for_tenant(tenant.id)
        per_second, burst = limits.rate_limit_requests_per_second, limits.rate_limit_burst
        wait = self.rate.take(tenant.id, per_second, burst)
        if wait is not None:
            raise RateLimited(
                f"tenant {tenant.id!r} is over its rate of {per_second:g} requests/s "
                f"(burst {burst}; settings rate_limit_requests_per_second, rate_limit_burst); "
                f"retry in {wait:g} s",
                retry_after_seconds=wait,
            )
        account = self.work.account(
            tenant.id, limits.work_seconds_per_second, limits.work_burst_seconds
        )
        if work is not None:
            work.tenant_id, work.account, work.turns = tenant.id, account, self.work.turns
        if body_bytes > limits.max_request_bytes:
            raise RequestTooLarge.over(limits.max_request_bytes, body_bytes)
        return limits

    async def ingest(
        self,
        tenant: Tenant,
        request: ExportMetricsServiceRequest,
        raw: bytes | None = None,
        work: Work | None = None,
    ) -> ExportMetricsServiceResponse:
        """Drop what `tenant` may not send, stamp it on the rest, forward; the OTLP answer.

        `raw` is the protobuf the request was decoded from, when there is one:
        it lets stamping skip the search for tenant claims when none can be there.
        The checks run in slices of `work` (gateway.work).
        """
        work = work or Work()
        limits = self.limits.for_tenant(tenant.id)
        limit = limits.max_data_points_per_request
        work.begin()
        try:
            # Before any point is looked at: its cost is bounded by the limit.
            sent = bounded_count(request, limit)
        finally:
            work.end()
        if limit and sent > limit:
            self._count_points(tenant, sent, "rejected", "too_many_data_points")
            raise TooManyDataPoints(
                f"{sent} data points in one request, limit {limit} (setting "
                "max_data_points_per_request); send smaller batches (max_export_batch_size "
                "in the OpenTelemetry SDK)"
            )
        swollen = raw is not None and len(raw) > sent * SWOLLEN_BYTES_PER_POINT
        checks = enforce_steps(
            request,
            tenant.id,
            limits,
            self.series,
            self._clock(),
            namespace=self.namespace,
            swollen=swollen,
        )
        small = sent <= SMALL_REQUEST_POINTS and raw is not None and len(raw) <= SMALL_REQUEST_BYTES
        rejections = work.run_small(checks) if small else await work.run(checks)
        for reason, count in rejections.counts.items():
            self._count_points(tenant, count, "rejected", reason)
            self._metrics.rejections.add(1, {"tenant_id": tenant.id, "reason": reason})
            self.usage.dropped(tenant.id, reason, count)
        for observer in self.observers:
            try:
                steps = observer.request_steps(tenant, request, raw)
                if small:
                    work.run_small(steps)
                else:
                    await work.run(steps)
            except Exception:
                # A broken observer must not fail the export.
                logger.exception("observer %r failed", observer)
        strip = raw is None or (
            work.run_small(may_claim_tenant_steps(raw))
            if small
            else await work.run(may_claim_tenant_steps(raw))
        )
        stamping = stamp_steps(request, tenant, strip=strip)
        points = work.run_small(stamping) if small else await work.run(stamping)
        response = await self._forward(tenant, request, points)
        return _with_rejections(response, rejections, sent)

    async def _forward(
        self, tenant: Tenant, request: ExportMetricsServiceRequest, points: int
    ) -> ExportMetricsServiceResponse:
        if points == 0:
            # Valid OTLP with nothing (left) in it: accepted, nothing to store.
            return ExportMetricsServiceResponse()
        started = time.perf_counter()
        try:
            response = await self._forwarder.forward(request)
        except GatewayError:
            self._count_points(tenant, points, "failed")
            raise
        finally:
            self._metrics.forward_duration.record(time.perf_counter() - started)
        self._count_points(tenant, points, "forwarded")
        self.usage.forwarded(tenant.id, points)
        return response

    def _count_points(self, tenant: Tenant, points: int, outcome: str, reason: str = "") -> None:
        labels = {"tenant_id": tenant.id, "outcome": outcome}
        if reason:
            labels["reason"] = reason
        self._metrics.data_points.add(points, labels)


def decode_protobuf(body: bytes) -> ExportMetricsServiceRequest:
    """Parse a serialized ExportMetricsServiceRequest, less unknown fields; raise
    InvalidRequest if unusable (a small body: gateway.decode parses large ones in slices)."""
    request = ExportMetricsServiceRequest()
    try:
        request.ParseFromString(body)
    except DecodeError as exc:
        # upb says what is wrong (bad UTF-8, truncated, nested too deep) after
        # a prefix naming the message type.
        detail = str(exc).rpartition("': ")[2] or "not protobuf"
        raise InvalidRequest(
            f"the body is not a valid OTLP ExportMetricsServiceRequest protobuf: {detail}"
        ) from exc
    request.DiscardUnknownFields()
    return request


def _with_rejections(
    response: ExportMetricsServiceResponse, rejections: Rejections, sent: int
) -> ExportMetricsServiceResponse:
    partial = response.partial_success
    if not rejections.counts:  # a refused resource without points still says why
        if not partial.rejected_data_points and not partial.error_message:
            # The spec wants it unset on full success; the Collector sends it empty.
            response.ClearField("partial_success")
        return response
    theirs = partial.error_message  # the Collector sets none today; keep it if it does
    partial.rejected_data_points += rejections.total
    partial.error_message = rejections.message(sent) + (f"; collector: {theirs}" if theirs else "")
    return response
