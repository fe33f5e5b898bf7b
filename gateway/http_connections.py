"""The HTTP port's connections: how many one address may hold, how long headers may take.

uvicorn serves a connection for as long as its client keeps it, whether or not
it ever sends a request: a few hosts opening connections and sending nothing
(or headers a byte at a time) would hold the port's sockets and descriptors.
Each connection here counts against its address's cap
(`max_http_connections_per_peer`, gateway.peers) and must send each request's
headers within `http_header_timeout_seconds` of opening or of its last answer.
A connection over the cap is answered 429 with Retry-After on its first
request, then closed. Bodies are paced by the chain (gateway.chain.BodyPace).

h11 parses a chunked body chunk by chunk, ~14 µs each on the event loop, before
the chain sees a byte (and after a refusal too, to reach the next request): a
body of 500,000 one-byte chunks held the loop 3-4 s, key or no key. So a body
may come in at most `FREE_BODY_PIECES` pieces plus one per `BODY_PIECE_BYTES` of
it; past that the request is answered 400 `invalid_request` and the connection
closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.errors import GatewayError, InvalidRequest, PeerOverloaded
from gateway.http_edge import Receive, Scope, Send, json_refusal
from gateway.peers import PeerCounts

CountRefusal = Callable[[GatewayError], None]
FREE_BODY_PIECES = 256
BODY_PIECE_BYTES = 1024
"""A body's pieces (chunks, or reads of a sized body) allowed beyond the free ones: one
per this many bytes of it. Exporters send chunks of kilobytes, or sized bodies."""
LINGER_SECONDS = 1.0


def _drop(data: bytes) -> None:
    del data


def bounded_protocol(
    base: type[H11Protocol],
    peers: PeerCounts,
    header_timeout_seconds: float,
    count: CountRefusal,
) -> type[H11Protocol]:
    """`base` (uvicorn's h11 protocol or a subclass) with a connection cap per
    address and a deadline on each request's headers."""

    class BoundedProtocol(base):  # type: ignore[valid-type,misc]
        _address: tuple[str, str] | None = None
        _counted = False
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            try:
                self._address = peers.enter(self.client[0] if self.client else "")
                self._counted = True
            except PeerOverloaded as exc:
                self.app = _refusing(exc, count)
            self._await_headers()
            self._count_body_pieces()

        def _count_body_pieces(self) -> None:
            next_event = self.conn.next_event
            pieces = size = 0

            def counted() -> Any:
                nonlocal pieces, size
                event = next_event()
                if type(event) is h11.Data:
                    pieces += 1
                    size += len(event.data)
                    if pieces > FREE_BODY_PIECES + size // BODY_PIECE_BYTES:
                        self._refuse_pieces(pieces, size)
                        return h11.NEED_DATA  # parse nothing more: the connection closes
                elif type(event) is h11.Request:
                    pieces = size = 0
                return event

            self.conn.next_event = counted

        def _refuse_pieces(self, pieces: int, size: int) -> None:
            error = InvalidRequest(
                f"the body came in {pieces} pieces for {size} bytes (at most "
                f"{FREE_BODY_PIECES} plus one per {BODY_PIECE_BYTES} bytes): send larger "
                "chunks, or a Content-Length body"
            )
            count(error)
            if self.conn.our_state is h11.SEND_RESPONSE:  # no answer begun: this is it
                answer = json_refusal(error, {"Connection": "close"})
                self.transport.write(
                    f"HTTP/1.1 {answer.status} Bad Request\r\n"
                    f"content-type: {answer.media_type}\r\n"
                    f"content-length: {len(answer.body)}\r\nconnection: close\r\n\r\n".encode()
                    + answer.body
                )
            # What still comes is dropped unparsed for a moment, then the connection
            # closes: closing with unread data would reset it, and the answer with it.
            self.data_received = _drop
            self.loop.call_later(LINGER_SECONDS, self.transport.close)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._await_headers()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            if self._counted:
                self._counted = False
                peers.leave(self._address)
            super().connection_lost(exc)

        def _await_headers(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(
                header_timeout_seconds, self._headers_late, self.cycle
            )

        def _headers_late(self, cycle: Any) -> None:
            # No request began since the timer was set (a pipelined one may
            # have begun before it: that one is running, not late).
            idle = cycle is None or cycle.response_complete
            if self.cycle is cycle and idle and not self.transport.is_closing():
                self.transport.close()

    return BoundedProtocol


def _refusing(error: PeerOverloaded, count: CountRefusal) -> Callable[..., Any]:
    async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
        del scope, receive
        count(error)
        await json_refusal(error, {"Connection": "close"}).send(send)

    return refuse
