"""The test point of `otel-agents check`, sent over OTLP/gRPC or OTLP/HTTP, and what came back.

Where this sits: `otel-agents check` ──(*testpoint*)──▶ OTLP/gRPC or OTLP/HTTP ──▶ gateway.

Each send uses the agent's own settings (key, headers, CA, client certificate) and
reports a classified outcome, so that the check can give advice that fits.
"""

from __future__ import annotations

import http.client
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from otel_agents.certificate import read_regular_file
from otel_agents.config import AgentConfig

TENANT_HEADER = "x-otel-tenant"
"""The gateway answers an accepted export with the tenant it was stored under."""

TIMEOUT_S = 5.0
EXPORT_METHOD = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"

Outcome = Literal["accepted", "key refused", "not grpc", "not found", "unreachable", "failed"]

# How grpc-core reports an HTTP/1.x answer to its HTTP/2 preface.
_HTTP1_MARKERS = ("http1.x server", "frame type", "http2 header with status", "content-type")


@dataclass(frozen=True)
class Attempt:
    """The outcome of sending the test point once."""

    outcome: Outcome
    detail: str
    tenant: str | None = None

    @property
    def accepted(self) -> bool:
        """True when the gateway took the test point."""
        return self.outcome == "accepted"

    @property
    def landing(self) -> str:
        """ " under tenant 'x'" when the gateway named the tenant, else ""."""
        return f" under tenant {self.tenant!r}" if self.tenant else ""


def check_request() -> bytes:
    """A serialized ExportMetricsServiceRequest with one gauge point, `otel_agents_check`."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.metrics.v1.metrics_pb2 import (
        Gauge,
        Metric,
        NumberDataPoint,
        ResourceMetrics,
        ScopeMetrics,
    )

    point = NumberDataPoint(as_int=1, time_unix_nano=time.time_ns())
    metric = Metric(
        name="otel_agents.check",
        description="Test point sent by `otel-agents check`.",
        gauge=Gauge(data_points=[point]),
    )
    resource = ResourceMetrics(scope_metrics=[ScopeMetrics(metrics=[metric])])
    # agent.type "check": the gateway keeps this test out of its fleet table (no agent
    # to page for when the check ends).
    for key, value in (("service.name", "otel-agents-check"), ("agent.type", "check")):
        resource.resource.attributes.append(KeyValue(key=key, value=AnyValue(string_value=value)))
    return ExportMetricsServiceRequest(resource_metrics=[resource]).SerializeToString()


def send_grpc(endpoint: str, config: AgentConfig) -> Attempt:
    """Send the test point over OTLP/gRPC to `endpoint` (``scheme://host:port``)."""
    import grpc

    parts = urlsplit(endpoint)
    target = parts.netloc
    try:
        if parts.scheme == "https":
            key, chain = _client_pair(config)
            credentials = grpc.ssl_channel_credentials(
                _read(config.certificate_file), private_key=key, certificate_chain=chain
            )
            channel = grpc.secure_channel(target, credentials)
        else:
            channel = grpc.insecure_channel(target)
    except OSError as exc:
        return Attempt("failed", f"cannot read a TLS file: {exc}")
    export = channel.unary_unary(EXPORT_METHOD, request_serializer=None, response_deserializer=None)
    try:
        _, call = export.with_call(
            check_request(), metadata=config.grpc_metadata(), timeout=TIMEOUT_S
        )
    except grpc.RpcError as exc:
        return _grpc_failure(exc)
    finally:
        channel.close()
    # The gateway names the tenant in trailing metadata; initial is read too.
    metadata = (*(call.trailing_metadata() or ()), *(call.initial_metadata() or ()))
    tenant = dict(metadata).get(TENANT_HEADER)
    return Attempt("accepted", "accepted", str(tenant) if tenant else None)


def _grpc_failure(exc: object) -> Attempt:
    import grpc

    assert isinstance(exc, grpc.Call)
    code, details = exc.code(), exc.details() or ""
    described = f"{code.name}: {details}"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Attempt("key refused", details)
    if any(marker in details.lower() for marker in _HTTP1_MARKERS) or code in (
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
    ):
        return Attempt("not grpc", described)
    if code == grpc.StatusCode.UNAVAILABLE:
        return Attempt("unreachable", described)
    return Attempt("failed", described)


def send_http(url: str, config: AgentConfig) -> Attempt:
    """POST the test point over OTLP/HTTP to `url` (``.../v1/metrics``)."""
    if urlsplit(url).scheme not in ("http", "https"):
        return Attempt("failed", f"{url} is not an http(s) URL")
    headers = {"content-type": "application/x-protobuf", **dict(config.grpc_metadata())}
    request = urllib.request.Request(  # noqa: S310 (scheme checked above)
        url, data=check_request(), headers=headers, method="POST"
    )
    try:
        context = _ssl_context(config) if url.startswith("https://") else None
        with urllib.request.urlopen(request, timeout=TIMEOUT_S, context=context) as response:  # noqa: S310
            tenant = response.headers.get(TENANT_HEADER)
    except urllib.error.HTTPError as exc:
        detail = f"{url} answered {exc.code} {exc.reason}"
        if exc.code == 401:
            return Attempt("key refused", detail)
        return Attempt("not found" if exc.code in (404, 405) else "failed", detail)
    except http.client.HTTPException as exc:
        # An HTTP/2-only server (a gRPC port) answers HTTP/1.1 with a binary frame.
        return Attempt("failed", f"{url} did not answer in HTTP/1.1 ({type(exc).__name__})")
    except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
        return Attempt("unreachable", f"{url}: {exc}")
    return Attempt("accepted", f"accepted at {url}", tenant)


def _ssl_context(config: AgentConfig) -> ssl.SSLContext:
    ca = config.certificate_file
    context = ssl.create_default_context(
        cadata=read_regular_file(ca, 16 << 20).decode("ascii", "replace") if ca else None
    )
    if config.client_certificate_file and config.client_key_file:
        # ssl opens these by path only: refuse a FIFO (which would block) first.
        _read(config.client_certificate_file)
        _read(config.client_key_file)
        context.load_cert_chain(config.client_certificate_file, config.client_key_file)
    return context


def _client_pair(config: AgentConfig) -> tuple[bytes | None, bytes | None]:
    if config.client_certificate_file and config.client_key_file:
        return _read(config.client_key_file), _read(config.client_certificate_file)
    return None, None


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    return read_regular_file(path, 16 << 20)
