"""OTLP/HTTP transport adapter: POST /v1/metrics → the chain (gateway.chain) → the answer.

The adapter gathers the credentials, says how the body is read and decoded, and
writes the outcome in the request's encoding; the chain does the rest. Bodies
are binary protobuf (`application/x-protobuf`) or OTLP/JSON
(`application/json`), optionally gzip-compressed. The answer uses the request's
encoding: an ExportMetricsServiceResponse on success, a google.rpc.Status with
the error's HTTP status on refusal (OTLP/HTTP specification, "Failures").
"""

from __future__ import annotations

import base64
import contextlib
import json
import json.scanner
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc.status_pb2 import Status  # type: ignore[import-untyped]
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from gateway.chain import TENANT_HEADER, Chain, Decode, Decoding
from gateway.decode import decode_protobuf
from gateway.errors import GatewayError, InvalidRequest, JsonTooLarge, UnsupportedMediaType
from gateway.http_edge import (
    Answer,
    Receive,
    RequestBody,
    Scope,
    Send,
    check_encoding,
    credentials,
    header,
    refusal_headers,
)
from gateway.tenants import Tenant

logger = logging.getLogger(__name__)

TRANSPORT = "http"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_ID_FIELDS = frozenset({"traceId", "trace_id", "spanId", "span_id"})


@dataclass(frozen=True)
class Codec:
    """One OTLP/HTTP body encoding: how to read a request and write a message."""

    media_type: str
    decode: Decode
    encode: Callable[[Message], bytes]

    def answer(
        self, message: Message, status: int = 200, headers: dict[str, str] | None = None
    ) -> Answer:
        """`message` as an answer in this encoding."""
        return Answer(status, self.encode(message), self.media_type, dict(headers or {}))


C_JSON_BYTES = 128 * 1024
"""Larger JSON is parsed by Python's pure-Python scanner: about ten times slower,
but it lets the event loop take the GIL every few milliseconds, where the C
parser holds it for the whole document (~25 ms per MiB on a quiet core)."""


def _python_scanner() -> json.JSONDecoder:
    decoder = json.JSONDecoder()
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    return decoder


_PYTHON_JSON = _python_scanner()


def _parse_json(body: bytes) -> Any:
    if len(body) <= C_JSON_BYTES:
        return json.loads(body)
    return _PYTHON_JSON.decode(body.decode("utf-8"))  # UnicodeDecodeError is a ValueError


def decode_json(body: bytes) -> ExportMetricsServiceRequest:
    """An OTLP/JSON body as a request; unknown fields are ignored, as the spec requires."""
    try:
        document = _parse_json(body)
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


async def _decode_json(decoding: Decoding, body: bytes) -> ExportMetricsServiceRequest:
    """OTLP/JSON, bounded: the JSON parser runs in one call (up to
    `max_json_request_bytes` of it), building the request in Python; on a worker
    thread, so that the event loop takes its turn every few milliseconds."""
    limit = decoding.limits.max_json_request_bytes
    if len(body) > limit:
        raise JsonTooLarge(
            f"the OTLP/JSON body of {len(body)} bytes is over the limit of {limit} bytes "
            "(setting max_json_request_bytes: GATEWAY_MAX_JSON_REQUEST_BYTES or the limits "
            f"file; counted uncompressed); send smaller batches or {PROTOBUF}"
        )
    return await decoding.work.offload(_JSON_DECODERS, decode_json, body)


_JSON_DECODERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="otlp-json")
"""Two threads: they share the GIL with the event loop rather than take it over;
each tenant decodes one body at a time (gateway.work.Work.offload)."""

CODECS = {
    PROTOBUF: Codec(PROTOBUF, decode_protobuf, lambda m: m.SerializeToString()),
    JSON: Codec(JSON, _decode_json, _encode_json),
}


def media_type(content_type: str | None) -> str:
    """`Application/JSON; charset=utf-8` → `application/json`."""
    return (content_type or "").partition(";")[0].strip().lower()


def refusal(codec: Codec, error: GatewayError) -> Answer:
    """A google.rpc.Status body in the request's encoding, with the HTTP mapping of
    gateway.http_edge (status, Retry-After, WWW-Authenticate)."""
    status = Status(code=error.grpc_status.value[0], message=str(error))
    return codec.answer(status, error.http_status, refusal_headers(error))


class OtlpHttpExport:
    """POST /v1/metrics, a plain ASGI app: the chain, then the answer in the request's
    encoding (a body whose type the gateway does not read is answered in JSON)."""

    def __init__(self, chain: Chain) -> None:
        self._chain = chain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One OTLP/HTTP export: counted with transport="http", whatever its outcome."""
        content_type = media_type(header(scope, b"content-type"))
        codec = CODECS.get(content_type)
        encoding = header(scope, b"content-encoding")

        def vet(tenant: Tenant) -> None:
            if codec is None:
                raise UnsupportedMediaType(
                    f"Content-Type {content_type or '(none)'!r} is not supported: "
                    f"send {PROTOBUF} or {JSON}"
                )
            check_encoding(encoding)

        outcome = await self._chain.export(
            TRANSPORT,
            credentials(scope),
            RequestBody(scope, receive),
            # Unused when the type is unknown: vet refuses first.
            (codec or CODECS[JSON]).decode,
            # A protobuf body lets ingest skip the search for tenant claims; JSON
            # may escape the letters it looks for.
            protobuf=codec is not None and codec.media_type == PROTOBUF,
            vet=vet,
        )
        if outcome.error is not None:
            answer = refusal(codec or CODECS[JSON], outcome.error)
        else:
            # ingest leaves partial_success unset on full success, as the spec wants.
            answer = (codec or CODECS[JSON]).answer(outcome.response)
            # Which tenant the data was stored under: `otel-agents check` shows it.
            answer.headers[TENANT_HEADER] = outcome.tenant_id
        await answer.send(send)
