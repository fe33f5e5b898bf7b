"""The only module that talks to the Collector: OTLP/gRPC export with a deadline.

gRPC failures are translated here, once, into the gateway's errors.
"""

from __future__ import annotations

import logging

import grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2_grpc import MetricsServiceStub

from gateway.errors import CollectorUnavailable, GatewayError, InvalidRequest

logger = logging.getLogger(__name__)

# Statuses after which the same request may succeed later: the client is told
# UNAVAILABLE, which every OTLP exporter retries.
_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)


class CollectorForwarder:
    """Forwards enriched requests to the Collector's OTLP/gRPC receiver."""

    def __init__(self, endpoint: str, timeout_seconds: float, max_message_bytes: int) -> None:
        self._endpoint = endpoint
        self._timeout = timeout_seconds
        self._max_message_bytes = max_message_bytes
        self._channel: grpc.aio.Channel | None = None
        self._stub: MetricsServiceStub | None = None

    def _connected_stub(self) -> MetricsServiceStub:
        # Created on first use: a grpc.aio channel belongs to the event loop
        # that is running when it is made.
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(
                self._endpoint,
                options=[
                    ("grpc.max_send_message_length", self._max_message_bytes),
                    # Notice a restarted Collector within seconds, not gRPC's
                    # default of up to two minutes of back-off.
                    ("grpc.initial_reconnect_backoff_ms", 250),
                    ("grpc.max_reconnect_backoff_ms", 2000),
                ],
            )
            self._stub = MetricsServiceStub(self._channel)  # type: ignore[no-untyped-call]
        return self._stub

    async def forward(self, request: ExportMetricsServiceRequest) -> ExportMetricsServiceResponse:
        """Export `request`; raise CollectorUnavailable when it should be retried."""
        try:
            response: ExportMetricsServiceResponse = await self._connected_stub().Export(
                request, timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from exc
        return response

    async def is_ready(self, timeout_seconds: float = 1.0) -> bool:
        """True when the Collector answers an empty export within the timeout."""
        try:
            await self._connected_stub().Export(
                ExportMetricsServiceRequest(), timeout=timeout_seconds
            )
        except grpc.aio.AioRpcError as exc:
            logger.debug("collector at %s not ready: %s", self._endpoint, exc.code())
            return False
        return True

    async def close(self) -> None:
        """Close the channel."""
        if self._channel is not None:
            await self._channel.close(grace=None)
            self._channel = self._stub = None


def _translate(exc: grpc.aio.AioRpcError) -> GatewayError:
    code = exc.code()
    if code in _TRANSIENT:
        logger.warning("collector refused a forward: %s %s", code.name, exc.details())
        return CollectorUnavailable(
            f"the metrics backend is unavailable ({code.name}); the request was not stored, "
            "retry later"
        )
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidRequest(f"the metrics backend rejected the request: {exc.details()}")
    logger.error("collector failed a forward: %s %s", code.name, exc.details())
    return GatewayError(f"the metrics backend failed ({code.name})")
