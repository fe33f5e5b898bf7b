"""The middle of the request path: decode → stamp the tenant → forward.

Transport adapters (grpc_server, http_app) authenticate first and hand over a
`Tenant` and the raw request; nothing here knows about gRPC servers or HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from gateway.enrich import stamp_tenant
from gateway.errors import GatewayError, InvalidRequest, RequestTooLarge
from gateway.telemetry import GatewayMetrics
from gateway.tenants import Tenant


class Forwarder(Protocol):
    """Where accepted requests go (the Collector, or a fake in unit tests)."""

    async def forward(
        self, request: ExportMetricsServiceRequest
    ) -> ExportMetricsServiceResponse: ...


class AcceptedObserver(Protocol):
    """Told about every request that reached the Collector (fleet status, ...)."""

    def on_accepted(self, tenant: Tenant, request: ExportMetricsServiceRequest) -> None: ...


class Ingestor:
    """Accepts one tenant's OTLP request and forwards it under that tenant.

    Every transport calls, in order: `admit` (before decoding), its own decoding
    (`decode` for protobuf), then `ingest`.
    """

    def __init__(
        self,
        forwarder: Forwarder,
        metrics: GatewayMetrics,
        max_request_bytes: int,
        observers: Sequence[AcceptedObserver] = (),
    ) -> None:
        self._forwarder = forwarder
        self._metrics = metrics
        self._max_request_bytes = max_request_bytes
        self.observers = list(observers)

    def admit(self, tenant: Tenant, body_bytes: int) -> None:
        """Refuse a request before it is decoded: size (and, per tenant, its rate)."""
        del tenant  # per-tenant limits come here
        if body_bytes > self._max_request_bytes:
            raise RequestTooLarge(
                f"request of {body_bytes} bytes is over the limit of {self._max_request_bytes}; "
                "send smaller batches (max_export_batch_size in the OpenTelemetry SDK)"
            )

    def decode(self, body: bytes) -> ExportMetricsServiceRequest:
        """Parse a serialized ExportMetricsServiceRequest; raise a GatewayError if unusable."""
        request = ExportMetricsServiceRequest()
        try:
            request.ParseFromString(body)
        except DecodeError as exc:
            raise InvalidRequest(
                "the body is not a valid OTLP ExportMetricsServiceRequest protobuf"
            ) from exc
        return request

    async def ingest(
        self, tenant: Tenant, request: ExportMetricsServiceRequest
    ) -> ExportMetricsServiceResponse:
        """Stamp `tenant` on every data point and forward; return the OTLP response."""
        points = stamp_tenant(request, tenant)
        if points == 0:
            # Valid OTLP with nothing in it: accepted, nothing to store.
            return ExportMetricsServiceResponse()
        started = time.perf_counter()
        try:
            response = await self._forwarder.forward(request)
        except GatewayError:
            self._metrics.data_points.add(points, {"tenant_id": tenant.id, "outcome": "failed"})
            raise
        finally:
            self._metrics.forward_duration.record(time.perf_counter() - started)
        self._metrics.data_points.add(points, {"tenant_id": tenant.id, "outcome": "forwarded"})
        for observer in self.observers:
            observer.on_accepted(tenant, request)
        return response
