"""OTLP/HTTP transport adapter: POST /v1/metrics → authenticate → admit → decode → ingest.

Bodies are binary protobuf (`application/x-protobuf`) or OTLP/JSON
(`application/json`), optionally gzip-compressed. The answer uses the request's
encoding: an ExportMetricsServiceResponse on success, a google.rpc.Status with
the error's HTTP status on refusal (OTLP/HTTP specification, "Failures").
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc.status_pb2 import Status  # type: ignore[import-untyped]
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from gateway.app import Gateway
from gateway.errors import GatewayError, InvalidRequest
from gateway.http_edge import (
    UnsupportedMediaType,
    credentials,
    decode_content,
    read_body,
    retry_after,
)

TENANT_HEADER = "x-otel-tenant"

logger = logging.getLogger(__name__)

TRANSPORT = "http"
UNKNOWN_TENANT = "unknown"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_ID_FIELDS = frozenset({"traceId", "trace_id", "spanId", "span_id"})


@dataclass(frozen=True)
class Codec:
    """One OTLP/HTTP body encoding: how to read a request and write a message."""

    media_type: str
    decode: Callable[[Gateway, bytes], ExportMetricsServiceRequest]
    encode: Callable[[Message], bytes]

    def answer(self, message: Message, status: int = 200) -> Response:
        """`message` as a response body in this encoding."""
        return Response(self.encode(message), status_code=status, media_type=self.media_type)


def decode_json(body: bytes) -> ExportMetricsServiceRequest:
    """An OTLP/JSON body as a request; unknown fields are ignored, as the spec requires."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise InvalidRequest("the body must be a JSON object (an ExportMetricsServiceRequest)")
    _hex_ids_to_base64(document)
    request = ExportMetricsServiceRequest()
    try:
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise InvalidRequest(
            f"the body is not an OTLP/JSON ExportMetricsServiceRequest: {str(exc)[:300]}"
        ) from exc
    return request


def _hex_ids_to_base64(document: dict[str, Any]) -> None:
    """OTLP/JSON writes exemplars' traceId/spanId in hex where protobuf's JSON mapping
    expects base64; convert them in place (values that are not hex are left as sent)."""
    stack: list[Any] = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            for key, value in node.items():
                if key in _ID_FIELDS and isinstance(value, str) and value:
                    with contextlib.suppress(ValueError):
                        node[key] = base64.b64encode(bytes.fromhex(value)).decode()
                elif isinstance(value, dict | list):
                    stack.append(value)


def _encode_json(message: Message) -> bytes:
    return json_format.MessageToJson(message, indent=None).encode()


def _decode_protobuf(gateway: Gateway, body: bytes) -> ExportMetricsServiceRequest:
    return gateway.ingestor.decode(body)


def _decode_json(gateway: Gateway, body: bytes) -> ExportMetricsServiceRequest:
    del gateway
    return decode_json(body)


CODECS = {
    PROTOBUF: Codec(PROTOBUF, _decode_protobuf, lambda m: m.SerializeToString()),
    JSON: Codec(JSON, _decode_json, _encode_json),
}


def media_type(content_type: str | None) -> str:
    """`Application/JSON; charset=utf-8` → `application/json`."""
    return (content_type or "").partition(";")[0].strip().lower()


def error_response(codec: Codec, error: GatewayError) -> Response:
    """A google.rpc.Status body with the error's HTTP status (and Retry-After)."""
    status = Status(code=error.grpc_status.value[0], message=str(error))
    response = codec.answer(status, error.http_status)
    delay = retry_after(error)
    if delay is not None:
        response.headers["Retry-After"] = delay
    return response


async def export(gateway: Gateway, request: Request) -> Response:
    """One OTLP/HTTP export: counted with transport="http", whatever its outcome."""
    content_type = media_type(request.headers.get("content-type"))
    codec = CODECS.get(content_type)
    tenant_id = UNKNOWN_TENANT
    error: GatewayError | None = None
    response = ExportMetricsServiceResponse()
    body = b""
    entered = False  # taken into the in-flight bound
    try:
        tenant = gateway.authenticator.authenticate(credentials(request))
        tenant_id = tenant.id
        if codec is None:
            raise UnsupportedMediaType(
                f"Content-Type {content_type or '(none)'!r} is not supported: "
                f"send {PROTOBUF} or {JSON}"
            )
        limit = gateway.settings.max_request_bytes
        raw = await read_body(request, limit)
        body = decode_content(raw, request.headers.get("content-encoding"), limit)
        gateway.in_flight.enter(len(body))
        entered = True
        gateway.ingestor.admit(tenant, len(body))
        # ingest leaves partial_success unset on full success, as the spec wants.
        # A protobuf body lets ingest skip the search for tenant claims; JSON may
        # escape the letters it looks for.
        protobuf = body if codec.media_type == PROTOBUF else None
        response = await gateway.ingestor.ingest(tenant, codec.decode(gateway, body), protobuf)
    except GatewayError as exc:
        error = exc
    except Exception:
        logger.exception("unexpected error handling an HTTP export for tenant %s", tenant_id)
        error = GatewayError("unexpected gateway error; the request was not stored")
    finally:
        if entered:
            gateway.in_flight.exit(len(body))
    gateway.count_outcome(TRANSPORT, tenant_id, error)
    if error is not None:
        # A body we cannot read is answered in JSON: readable with curl.
        return error_response(codec or CODECS[JSON], error)
    answer = (codec or CODECS[JSON]).answer(response)
    # Which tenant the data was stored under: `otel-agents check` shows it.
    answer.headers[TENANT_HEADER] = tenant_id
    return answer


def otlp_router(gateway: Gateway) -> APIRouter:
    """The OTLP/HTTP metrics route of one gateway."""
    router = APIRouter()

    @router.post("/v1/metrics")
    async def post_metrics(request: Request) -> Response:
        """OTLP/HTTP ExportMetricsServiceRequest (protobuf or JSON, optionally gzip)."""
        return await export(gateway, request)

    return router
