"""What every HTTP route shares: credentials, a body read under the in-flight bound,
gzip, and the one mapping of a refusal to an HTTP answer.

Routes on the request path are plain ASGI (gateway.otlp_http, gateway.legacy):
a body is read chunk by chunk only after the chain took its in-flight lease, and
each chunk, compressed or decompressed, is counted in that lease before it is
kept, so neither a huge body, a slow one nor a small gzip bomb can make the
gateway hold more than its bounds, however many arrive at once.
"""

from __future__ import annotations

import asyncio
import json
import math
import zlib
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import Response

from gateway.auth import Credentials, authorization_from
from gateway.chain import BodyPace
from gateway.errors import (
    GatewayError,
    InvalidReport,
    InvalidRequest,
    RequestTooLarge,
    TooManyGzipMembers,
)
from gateway.errors import UnsupportedMediaType as UnsupportedMediaType
from gateway.inflight import Lease
from gateway.tls import client_certificate_from_asgi
from gateway.work import Steps, Work

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

RETRY_AFTER_DEFAULT_SECONDS = 2
"""Retry-After of a 429 or 503 whose error names no delay: short, as exporters
drop a batch whose retry delay outruns their export timeout."""
GUNZIP_STEP_BYTES = 64 * 1024
"""Decompressed bytes produced per step at most; between steps other requests may run."""
GUNZIP_FEED_BYTES = 4 * 1024
"""Compressed bytes given to zlib per step."""
DEFAULT_MAX_GZIP_MEMBERS = 64
"""Members of one gzip body when no limit is given (the `max_gzip_members` default)."""

_IDENTITY = frozenset({"", "identity"})
_GZIP = frozenset({"gzip", "x-gzip"})


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header `name` (lower-case) of an ASGI request, else None."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def credentials(scope: Scope) -> Credentials:
    """The request's authorization header(s), client address and verified client
    certificate (mTLS: the server puts it in the ASGI scope's `tls` extension)."""
    client = scope.get("client")
    return Credentials(
        authorization_from(value for key, value in scope["headers"] if key == b"authorization"),
        peer=client[0] if client else "",
        client_certificate=client_certificate_from_asgi(scope),
    )


def check_encoding(encoding: str | None) -> None:
    """Refuse a Content-Encoding other than none or gzip (415)."""
    if (encoding or "").strip().lower() not in _IDENTITY | _GZIP:
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not supported: send gzip or no Content-Encoding"
        )


class RequestBody:
    """An ASGI request's body: read from `receive` and gunzipped within a lease."""

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self._receive = receive
        declared = header(scope, b"content-length") or ""
        self._declared = int(declared) if declared.isdigit() else 0
        self._encoding = (header(scope, b"content-encoding") or "").strip().lower()

    @property
    def size_hint(self) -> int:
        """Content-Length, or 0 when the client did not say."""
        return self._declared

    async def read(
        self,
        lease: Lease,
        limit: int,
        pace: BodyPace,
        work: Work,
        max_gzip_members: int = DEFAULT_MAX_GZIP_MEMBERS,
    ) -> bytes:
        """The body, decompressed, at most `limit` bytes either way; each chunk due by
        the time `pace` allows for the bytes received before it; decompressed in
        slices of `work`."""
        if self._declared > limit:
            raise RequestTooLarge.over(limit)
        chunks: list[bytes] = []
        size = 0
        more = True
        loop = asyncio.get_running_loop()
        started = loop.time()
        while more:
            try:
                async with asyncio.timeout_at(started + pace.seconds_for(size)):
                    message = await self._receive()
            except TimeoutError as exc:
                raise pace.too_slow(size, loop.time() - started) from exc
            if message["type"] == "http.disconnect":
                raise InvalidRequest("the client closed the connection before the body ended")
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            size += len(chunk)
            if size > limit:
                raise RequestTooLarge.over(limit)
            if size > lease.bytes:
                lease.grow(size - lease.bytes)
            chunks.append(chunk)
        raw = _joined(chunks, size, lease)
        if self._encoding in _IDENTITY:
            return raw
        check_encoding(self._encoding)
        body = await gunzip(raw, limit, lease, work, max_gzip_members)
        lease.shrink(len(raw))  # the compressed form is let go of now
        return body


async def gunzip(
    data: bytes,
    limit: int,
    lease: Lease | None = None,
    work: Work | None = None,
    max_members: int = DEFAULT_MAX_GZIP_MEMBERS,
) -> bytes:
    """Decompress gzip (at most `max_members` members) without ever producing over
    `limit` bytes, each step counted in `lease` before it is kept, in slices of `work`."""
    return await (work or Work()).run(_gunzip(data, limit, lease, max_members))


def _gunzip(data: bytes, limit: int, lease: Lease | None, max_members: int) -> Steps[bytes]:
    out: list[bytes] = []
    produced = 0
    view = memoryview(data)
    at = 0
    members = 1
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    while True:
        # The input is fed a little at a time: what zlib hands back unread
        # (unconsumed_tail, unused_data) is a copy, and copying the rest of a
        # large body at every member would make many members cost its square.
        feed = view[at : at + GUNZIP_FEED_BYTES]
        try:
            # One byte over the limit is enough to know it is too large.
            step = inflater.decompress(feed, min(GUNZIP_STEP_BYTES, limit + 1 - produced))
        except zlib.error as exc:
            raise InvalidRequest(
                f"the body is not valid gzip ({exc}) although Content-Encoding says gzip"
            ) from exc
        at += len(feed) - len(inflater.unconsumed_tail) - len(inflater.unused_data)
        produced += len(step)
        if produced > limit:
            raise RequestTooLarge.over(limit)
        if lease is not None:
            lease.grow(len(step))
        out.append(step)
        if inflater.eof:
            if at >= len(view):
                return _joined(out, produced, lease)
            members += 1
            if members > max_members:
                raise TooManyGzipMembers(
                    f"the gzip body has over {max_members} members (setting "
                    "max_gzip_members: GATEWAY_MAX_GZIP_MEMBERS or the limits file); "
                    "compress the body as one gzip stream"
                )
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # the next member
        elif not step and at >= len(view) and not inflater.unconsumed_tail:
            raise InvalidRequest("the gzip body is truncated")
        yield  # other requests may run between steps


def _joined(parts: list[bytes], size: int, lease: Lease | None) -> bytes:
    if len(parts) == 1:
        return parts[0]
    if lease is not None:
        lease.grow(size)  # for a moment the parts and the whole are both held
    whole = b"".join(parts)
    parts.clear()
    if lease is not None:
        lease.shrink(size)
    return whole


def retry_after(error: GatewayError) -> str | None:
    """The Retry-After value (whole seconds) for a retryable refusal, else None."""
    delay = error.retry_after_seconds
    if delay is None:
        if error.http_status not in (429, 503):
            return None
        delay = RETRY_AFTER_DEFAULT_SECONDS
    return str(max(1, math.ceil(float(delay))))


def refusal_headers(error: GatewayError) -> dict[str, str]:
    """The headers every HTTP refusal carries: Retry-After when it may be retried,
    WWW-Authenticate when a credential is missing or wrong."""
    headers: dict[str, str] = {}
    delay = retry_after(error)
    if delay is not None:
        headers["Retry-After"] = delay
    if error.http_status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return headers


@dataclass
class Answer:
    """An HTTP answer, sent by a plain ASGI route or returned by a FastAPI one."""

    status: int
    body: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)

    async def send(self, send: Send) -> None:
        """Send it on an ASGI connection."""
        headers = [
            (b"content-type", self.media_type.encode()),
            (b"content-length", str(len(self.body)).encode()),
            *((k.lower().encode(), v.encode("latin-1")) for k, v in self.headers.items()),
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})

    def response(self) -> Response:
        """The same as a Starlette response."""
        return Response(self.body, self.status, self.headers, self.media_type)


def json_answer(
    document: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] | None = None
) -> Answer:
    """A JSON answer."""
    body = json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    return Answer(status, body, "application/json", dict(headers or {}))


def json_refusal(error: GatewayError, headers: Mapping[str, str] | None = None) -> Answer:
    """A refusal as JSON: `{"error": reason, "message": ..., "detail": [...]}` (detail:
    the fields of an invalid legacy report)."""
    document: dict[str, Any] = {"error": error.reason, "message": error.message}
    if isinstance(error, InvalidReport):
        document["detail"] = error.detail
    return json_answer(document, error.http_status, {**refusal_headers(error), **(headers or {})})
