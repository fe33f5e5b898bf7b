"""What every HTTP route of the request path shares: credentials, a capped body,
gzip, and the Retry-After header.

Reading and decompressing are bounded by `max_request_bytes` so that neither a
huge body nor a small gzip bomb can make the gateway hold more than that.
"""

from __future__ import annotations

import math
import zlib

from fastapi import Request

from gateway.auth import Credentials, authorization_from
from gateway.errors import GatewayError, InvalidRequest, RequestTooLarge

RETRY_AFTER_DEFAULT_SECONDS = 2
"""Retry-After of a 429 or 503 whose error names no delay: short, as exporters
drop a batch whose retry delay outruns their export timeout."""

_IDENTITY = frozenset({"", "identity"})
_GZIP = frozenset({"gzip", "x-gzip"})


class UnsupportedMediaType(GatewayError):
    """The body's Content-Type or Content-Encoding is not one the gateway reads."""

    reason = "unsupported_media_type"
    http_status = 415
    grpc_status = InvalidRequest.grpc_status


def credentials(request: Request) -> Credentials:
    """The request's authorization header(s), client address and verified client
    certificate (mTLS: the server puts it in the ASGI scope's `tls` extension)."""
    client = request.client
    tls = (request.scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or ()
    return Credentials(
        authorization_from(request.headers.getlist("authorization")),
        peer=client.host if client else "",
        client_certificate=chain[0] if chain else None,
    )


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(
        f"the request is over the limit of {limit} bytes (GATEWAY_MAX_REQUEST_BYTES, "
        "counted uncompressed); send smaller batches (max_export_batch_size in the "
        "OpenTelemetry SDK)"
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with RequestTooLarge as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def decode_content(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body without its Content-Encoding (none or gzip), at most `limit` bytes."""
    coding = (encoding or "").strip().lower()
    if coding in _IDENTITY:
        return body
    if coding in _GZIP:
        return gunzip(body, limit)
    raise UnsupportedMediaType(
        f"Content-Encoding {encoding!r} is not supported: send gzip or no Content-Encoding"
    )


def gunzip(data: bytes, limit: int) -> bytes:
    """Decompress gzip (several members allowed) without ever producing over `limit` bytes."""
    out = bytearray()
    remaining = data
    while True:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            # One byte over the limit is enough to know it is too large.
            out += inflater.decompress(remaining, limit + 1 - len(out))
        except zlib.error as exc:
            raise InvalidRequest(
                f"the body is not valid gzip ({exc}) although Content-Encoding says gzip"
            ) from exc
        if len(out) > limit:
            raise _too_large(limit)
        if not inflater.eof:
            raise InvalidRequest("the gzip body is truncated")
        remaining = inflater.unused_data
        if not remaining:
            return bytes(out)


def retry_after(error: GatewayError) -> str | None:
    """The Retry-After value (whole seconds) for a retryable refusal, else None."""
    delay = getattr(error, "retry_after_seconds", None)
    if delay is None:
        if error.http_status not in (429, 503):
            return None
        delay = RETRY_AFTER_DEFAULT_SECONDS
    return str(max(1, math.ceil(float(delay))))
