"""The HTTP port's connections: how many one address may hold, how long headers may take.

uvicorn serves a connection for as long as its client keeps it, whether or not
it ever sends a request: a few hosts opening connections and sending nothing
(or headers a byte at a time) would hold the port's sockets and descriptors.
Each connection here counts against its address's cap
(`max_http_connections_per_peer`, gateway.peers) and must send each request's
headers within `http_header_timeout_seconds` of opening or of its last answer.
A connection over the cap is answered 429 with Retry-After on its first
request, then closed. Bodies are paced by the chain (gateway.chain.BodyPace).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.errors import GatewayError, PeerOverloaded
from gateway.http_edge import Receive, Scope, Send, json_refusal
from gateway.peers import PeerCounts

CountRefusal = Callable[[GatewayError], None]


def bounded_protocol(
    base: type[H11Protocol],
    peers: PeerCounts,
    header_timeout_seconds: float,
    count: CountRefusal,
) -> type[H11Protocol]:
    """`base` (uvicorn's h11 protocol or a subclass) with a connection cap per
    address and a deadline on each request's headers."""

    class BoundedProtocol(base):  # type: ignore[valid-type,misc]
        _address: str | None = None
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
