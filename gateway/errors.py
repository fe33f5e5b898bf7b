"""Every way the gateway refuses a request: a stable reason, an HTTP and a gRPC status.

The reason is the `reason` label of the rejection counter and appears in the
message, so a client's log line, the gateway's metrics and docs/gateway.md all
name the same thing.
"""

from __future__ import annotations

from typing import ClassVar

import grpc


class GatewayError(Exception):
    """Base of all refusals; subclasses fix the reason and the statuses."""

    reason: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500
    grpc_status: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class Unauthenticated(GatewayError):
    """No credential, or one the gateway does not know."""

    reason = "unauthenticated"
    http_status = 401
    grpc_status = grpc.StatusCode.UNAUTHENTICATED

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause  # missing | malformed | unknown: the auth failure counter's label


class InvalidRequest(GatewayError):
    """The request cannot be decoded or is not OTLP metrics."""

    reason = "invalid_request"
    http_status = 400
    grpc_status = grpc.StatusCode.INVALID_ARGUMENT


class RequestTooLarge(GatewayError):
    """The request is over `max_request_bytes`."""

    reason = "request_too_large"
    http_status = 413
    grpc_status = grpc.StatusCode.RESOURCE_EXHAUSTED


class CollectorUnavailable(GatewayError):
    """The Collector could not take the data; the client should retry."""

    reason = "collector_unavailable"
    http_status = 503
    grpc_status = grpc.StatusCode.UNAVAILABLE
