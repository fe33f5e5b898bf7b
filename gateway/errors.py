"""Every way the gateway refuses data: a stable reason, an HTTP and a gRPC status.

`REASONS` is the one table. A reason either refuses the whole request (a
`GatewayError` subclass, raised, mapped to a status by each transport) or drops
single data points, which are reported in the OTLP response's `partial_success`
while the request itself succeeds (gRPC OK, HTTP 200).

The reason is the `reason` label of the rejection counters and starts every
message, so a client's log line, the gateway's metrics and docs/gateway.md all
name the same thing; `setting` names what changes the limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import grpc


@dataclass(frozen=True)
class Reason:
    """One row of the rejection table."""

    id: str
    grpc_status: grpc.StatusCode
    http_status: int
    refuses: Literal["request", "points"]
    setting: str = ""
    """The setting (GATEWAY_<NAME> or limits-file key) that changes the limit, if any."""


_OK, _INVALID, _EXHAUSTED = (
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)

REASONS: dict[str, Reason] = {
    r.id: r
    for r in (
        # Whole request refused (checked in this order).
        Reason("unauthenticated", grpc.StatusCode.UNAUTHENTICATED, 401, "request"),
        # RetryInfo is attached: exporters wait the given delay and retry.
        Reason(
            "rate_limited",
            _EXHAUSTED,
            429,
            "request",
            "rate_limit_requests_per_second, rate_limit_burst",
        ),
        # RetryInfo is attached: the tenant's share of processing time refills.
        Reason(
            "work_limited",
            _EXHAUSTED,
            429,
            "request",
            "work_seconds_per_second, work_burst_seconds",
        ),
        # No RetryInfo: by the OTLP spec RESOURCE_EXHAUSTED without it is not
        # retried (Go, Java); the Python exporter retries it for up to 10 s in vain.
        Reason("request_too_large", _EXHAUSTED, 413, "request", "max_request_bytes"),
        Reason("too_many_gzip_members", _EXHAUSTED, 413, "request", "max_gzip_members"),
        Reason("json_too_large", _EXHAUSTED, 413, "request", "max_json_request_bytes"),
        Reason("invalid_request", _INVALID, 400, "request"),
        Reason("too_many_data_points", _EXHAUSTED, 413, "request", "max_data_points_per_request"),
        # RetryInfo is attached, with a jittered delay of a few seconds.
        Reason(
            "overloaded",
            _EXHAUSTED,
            503,
            "request",
            "max_in_flight_requests, max_in_flight_bytes",
        ),
        # RetryInfo is attached, with a jittered delay of a few seconds: one tenant
        # holds its share of the in-flight bound, one address its calls or
        # connections, or a body came too slowly.
        Reason("tenant_overloaded", _EXHAUSTED, 429, "request", "in_flight_tenant_share"),
        Reason(
            "peer_overloaded",
            _EXHAUSTED,
            429,
            "request",
            "max_grpc_calls_per_peer, max_http_connections_per_peer",
        ),
        Reason(
            "body_timeout",
            grpc.StatusCode.UNAVAILABLE,
            503,
            "request",
            "body_timeout_seconds, body_min_bytes_per_second",
        ),
        Reason("collector_unavailable", grpc.StatusCode.UNAVAILABLE, 503, "request"),
        Reason("internal", grpc.StatusCode.INTERNAL, 500, "request"),
        # HTTP only: a body the gateway does not read, a legacy report it cannot use,
        # a key of another tenant than the URL names.
        Reason("unsupported_media_type", _INVALID, 415, "request"),
        Reason("invalid_report", _INVALID, 422, "request"),
        Reason("tenant_mismatch", grpc.StatusCode.PERMISSION_DENIED, 403, "request"),
        # The fleet admin API (POST /api/fleet/forget).
        Reason("forbidden", grpc.StatusCode.PERMISSION_DENIED, 403, "request", "admin_key_sha256"),
        Reason("unknown_agent", grpc.StatusCode.NOT_FOUND, 404, "request"),
        Reason("ambiguous_agent", grpc.StatusCode.FAILED_PRECONDITION, 409, "request"),
        # Single data points dropped (first failing check wins, in this order).
        # A resource or a scope over its limits: all its points, and it is not forwarded.
        Reason("resource_limit", _OK, 200, "points", "max_resource_attributes, max_resource_bytes"),
        Reason("metric_name_not_allowed", _OK, 200, "points", "metric_name_patterns"),
        # The platform's own metric names; the contract's and other tenants' names
        # keep their type and unit (gateway/namespace.py).
        Reason("metric_name_reserved", _OK, 200, "points"),
        Reason("metric_type_conflict", _OK, 200, "points"),
        Reason("metric_name_limit", _OK, 200, "points", "max_metric_names"),
        Reason("invalid_value", _OK, 200, "points"),
        Reason(
            "attribute_limit",
            _OK,
            200,
            "points",
            "max_attributes_per_point, max_attributes_per_scope",
        ),
        Reason(
            "attribute_key_not_allowed",
            _OK,
            200,
            "points",
            "attribute_key_patterns, max_attribute_key_length",
        ),
        Reason("attribute_value_too_long", _OK, 200, "points", "max_attribute_value_length"),
        Reason(
            "series_limit",
            _OK,
            200,
            "points",
            "max_active_series, active_series_window_seconds",
        ),
    )
}


class GatewayError(Exception):
    """Base of all refusals of a whole request; subclasses fix the reason and statuses.

    This base itself is the `internal` refusal (a bug, logged with its traceback).
    """

    reason: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500
    grpc_status: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    retry_after_seconds: float | None = None
    """Set when the client may retry the same request after this delay (rate limits)."""

    def __init_subclass__(cls, reason: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if reason:  # the statuses come from the table, never from the class body
            row = REASONS[reason]
            cls.reason, cls.http_status, cls.grpc_status = row.id, row.http_status, row.grpc_status

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class Unauthenticated(GatewayError, reason="unauthenticated"):
    """No credential, or one the gateway does not know."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause  # missing | malformed | unknown: the auth failure counter's label


class RateLimited(GatewayError, reason="rate_limited"):
    """The tenant sends more requests per second than its limit allows."""

    def __init__(self, message: str, retry_after_seconds: float) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class WorkLimited(GatewayError, reason="work_limited"):
    """The tenant's requests used more of the gateway's processing time than its share."""

    def __init__(self, message: str, retry_after_seconds: float) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class RequestTooLarge(GatewayError, reason="request_too_large"):
    """The request is over the tenant's `max_request_bytes`."""

    @classmethod
    def over(cls, limit: int, size: int | None = None) -> RequestTooLarge:
        """The refusal of a request of `size` bytes (None: still arriving) over `limit`."""
        what = "the request" if size is None else f"the request of {size} bytes"
        return cls(
            f"{what} is over the limit of {limit} bytes (setting max_request_bytes: "
            "GATEWAY_MAX_REQUEST_BYTES or the limits file; counted uncompressed); send "
            "smaller batches (max_export_batch_size in the OpenTelemetry SDK)"
        )


class TooManyGzipMembers(GatewayError, reason="too_many_gzip_members"):
    """A gzip body made of more members than `max_gzip_members`."""


class JsonTooLarge(GatewayError, reason="json_too_large"):
    """An OTLP/JSON body over `max_json_request_bytes`."""


class InvalidRequest(GatewayError, reason="invalid_request"):
    """The request cannot be decoded or is not OTLP metrics."""


class TooManyDataPoints(GatewayError, reason="too_many_data_points"):
    """The request holds more data points than `max_data_points_per_request`."""


class Overloaded(GatewayError, reason="overloaded"):
    """The gateway is handling as much as its in-flight limits allow."""

    def __init__(self, message: str, retry_after_seconds: float) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class TenantOverloaded(GatewayError, reason="tenant_overloaded"):
    """The tenant holds its share of the gateway's in-flight bound."""

    def __init__(self, message: str, retry_after_seconds: float) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class PeerOverloaded(GatewayError, reason="peer_overloaded"):
    """The client's address holds as many calls or connections as it may."""

    def __init__(self, message: str, retry_after_seconds: float) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class BodyTimeout(GatewayError, reason="body_timeout"):
    """The body or message did not arrive within its deadline."""

    def __init__(self, message: str, retry_after_seconds: float) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class CollectorUnavailable(GatewayError, reason="collector_unavailable"):
    """The Collector could not take the data; the client should retry."""


class UnsupportedMediaType(GatewayError, reason="unsupported_media_type"):
    """The body's Content-Type or Content-Encoding is not one the gateway reads."""


class InvalidReport(GatewayError, reason="invalid_report"):
    """A legacy report that is JSON but not a valid report; `detail` names each field."""

    def __init__(self, message: str, detail: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.detail = detail


class TenantMismatch(GatewayError, reason="tenant_mismatch"):
    """The URL names another tenant than the credential's."""


class Forbidden(GatewayError, reason="forbidden"):
    """The credential is valid but may not do this (a tenant's key on the admin API)."""


class UnknownAgent(GatewayError, reason="unknown_agent"):
    """The fleet has no such agent."""


class AmbiguousPrefix(GatewayError, reason="ambiguous_agent"):
    """An instance prefix that matches several agents."""
