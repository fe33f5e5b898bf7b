"""The gateway's bound on work in progress: requests and bytes being handled.

A request takes a `Lease` before its body is read (gRPC has read it already, HTTP
has not): the lease counts the bytes the request holds as they arrive and as
they are decompressed, so a flood of large or gzip-bombed bodies cannot hold
more than `max_bytes` between them, however many arrive at once. Past the bound
a request is refused at once with a retryable status (gRPC RESOURCE_EXHAUSTED
with RetryInfo, HTTP 503 with Retry-After): exporters back off and deliver
later, and the gateway's memory stays bounded however hard it is pushed or
however slowly the Collector answers.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from opentelemetry.metrics import CallbackOptions, Observation

from gateway.errors import Overloaded

# Spread the retries of many refused agents over a few seconds; the OTel
# Python exporter drops a batch whose delay exceeds its 10 s budget.
RETRY_SECONDS = (1.0, 3.0)


class InFlight:
    """Counts requests and their bytes in and out; refuses what would exceed a limit.

    A request alone is never refused for its size: a single request is bounded
    by `max_request_bytes`, which the limits keep below the transport's limit.
    """

    def __init__(self, max_requests: int, max_bytes: int) -> None:
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.requests = 0
        self.bytes = 0
        self.peak_bytes = 0
        """The most bytes held at once since start (tests and benchmarks read it)."""

    def enter(self, body_bytes: int = 0) -> Lease:
        """Take a request holding `body_bytes` in; raise Overloaded when there is no room."""
        if self.requests >= self.max_requests:
            raise self._overloaded()
        self._take(body_bytes, alone=self.requests == 0)
        self.requests += 1
        return Lease(self, body_bytes)

    def _take(self, more: int, alone: bool) -> None:
        if not alone and self.bytes + more > self.max_bytes:
            raise self._overloaded()
        self.bytes += more
        self.peak_bytes = max(self.peak_bytes, self.bytes)

    def _overloaded(self) -> Overloaded:
        return Overloaded(
            f"the gateway is at capacity ({self.requests} requests, {self.bytes} bytes "
            f"in progress; settings max_in_flight_requests={self.max_requests}, "
            f"max_in_flight_bytes={self.max_bytes}); retry later or add gateway replicas",
            retry_after_seconds=round(random.uniform(*RETRY_SECONDS), 1),  # noqa: S311 jitter
        )

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        """Requests in progress: the `gateway.requests.in_flight` gauge's callback."""
        del options
        return [Observation(self.requests)]


class Lease:
    """One request's place in the bound, and the bytes it holds now."""

    __slots__ = ("_in_flight", "_open", "bytes")

    def __init__(self, in_flight: InFlight, body_bytes: int) -> None:
        self._in_flight = in_flight
        self.bytes = body_bytes
        self._open = True

    def grow(self, more: int) -> None:
        """The request holds `more` bytes; raise Overloaded when they do not fit."""
        # Alone, a request may hold what its own size limit allows.
        self._in_flight._take(more, alone=self._in_flight.requests == 1)
        self.bytes += more

    def shrink(self, fewer: int) -> None:
        """The request let go of `fewer` bytes."""
        fewer = min(fewer, self.bytes)
        self._in_flight.bytes -= fewer
        self.bytes -= fewer

    def release(self) -> None:
        """The request is done (idempotent)."""
        if self._open:
            self._open = False
            self._in_flight.requests -= 1
            self._in_flight.bytes -= self.bytes
            self.bytes = 0
