"""The gateway's bound on work in progress: requests and bytes being handled.

A request takes a `Lease` right after authentication, before its body is read
(HTTP) or its message awaited (gRPC): the lease counts the bytes the request
holds as they arrive and as they are decompressed, so a flood of large or
gzip-bombed bodies cannot hold more than `max_bytes` between them, however many
arrive at once. One tenant holds at most `tenant_share` of either bound, so a
tenant that floods the gateway, uploads slowly or never sends its message
leaves the rest to the others. Past a bound a request is refused at once with a
retryable status (gRPC RESOURCE_EXHAUSTED with RetryInfo, HTTP 503 or 429 with
Retry-After): exporters back off and deliver later, and the gateway's memory
stays bounded however hard it is pushed or however slowly the Collector answers.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

from opentelemetry.metrics import CallbackOptions, Observation

from gateway.errors import Overloaded, TenantOverloaded

# Spread the retries of many refused agents over a few seconds; the OTel
# Python exporter drops a batch whose delay exceeds its 10 s budget.
RETRY_SECONDS = (1.0, 3.0)


def retry_delay() -> float:
    """A jittered retry delay, in seconds, for a refusal that may pass later."""
    return round(random.uniform(*RETRY_SECONDS), 1)  # noqa: S311 jitter


class _Holding:
    """What one tenant holds in the bound."""

    __slots__ = ("bytes", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0


class InFlight:
    """Counts requests and their bytes in and out, in all and per tenant; refuses
    what would exceed a bound.

    A request alone is never refused for its size: a single request is bounded
    by `max_request_bytes`, which the limits keep below the transport's limit.
    """

    def __init__(self, max_requests: int, max_bytes: int, tenant_share: float = 1.0) -> None:
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.tenant_share = tenant_share
        self.tenant_max_requests = max(1, math.floor(max_requests * tenant_share))
        self.tenant_max_bytes = max(1, math.floor(max_bytes * tenant_share))
        self.requests = 0
        self.bytes = 0
        self.peak_bytes = 0
        """The most bytes held at once since start (tests and benchmarks read it)."""
        self._tenants: dict[str, _Holding] = {}

    def enter(self, body_bytes: int = 0, tenant: str = "") -> Lease:
        """Take a request of `tenant` holding `body_bytes` in; raise Overloaded when
        the gateway has no room, TenantOverloaded when the tenant used its share."""
        if self.requests >= self.max_requests:
            raise self._overloaded()
        holding = self._tenants.get(tenant)
        if holding is None:
            holding = self._tenants[tenant] = _Holding()
        if holding.requests >= self.tenant_max_requests:
            self._forget_if_idle(tenant, holding)
            raise self._tenant_overloaded(tenant, holding)
        try:
            self._take(holding, tenant, body_bytes)
        except (Overloaded, TenantOverloaded):
            self._forget_if_idle(tenant, holding)
            raise
        self.requests += 1
        holding.requests += 1
        return Lease(self, tenant, holding, body_bytes)

    def held_by(self, tenant: str) -> tuple[int, int]:
        """The requests and bytes `tenant` holds now."""
        holding = self._tenants.get(tenant)
        return (holding.requests, holding.bytes) if holding is not None else (0, 0)

    def _take(self, holding: _Holding, tenant: str, more: int) -> None:
        # Alone (in all, or of its tenant), a request may hold what its own size
        # limit allows.
        if self.requests > 0 and self.bytes + more > self.max_bytes:
            raise self._overloaded()
        if holding.requests > 0 and holding.bytes + more > self.tenant_max_bytes:
            raise self._tenant_overloaded(tenant, holding)
        self.bytes += more
        holding.bytes += more
        self.peak_bytes = max(self.peak_bytes, self.bytes)

    def _forget_if_idle(self, tenant: str, holding: _Holding) -> None:
        if holding.requests == 0 and holding.bytes == 0:
            self._tenants.pop(tenant, None)

    def _overloaded(self) -> Overloaded:
        return Overloaded(
            f"the gateway is at capacity ({self.requests} requests, {self.bytes} bytes "
            f"in progress; settings max_in_flight_requests={self.max_requests}, "
            f"max_in_flight_bytes={self.max_bytes}); retry later or add gateway replicas",
            retry_after_seconds=retry_delay(),
        )

    def _tenant_overloaded(self, tenant: str, holding: _Holding) -> TenantOverloaded:
        return TenantOverloaded(
            f"tenant {tenant!r} holds its share of the gateway ({holding.requests} requests, "
            f"{holding.bytes} bytes in progress; at most {self.tenant_max_requests} requests "
            f"and {self.tenant_max_bytes} bytes: setting in_flight_tenant_share="
            f"{self.tenant_share:g} of max_in_flight_requests and max_in_flight_bytes); "
            "retry later, send smaller or fewer requests at once",
            retry_after_seconds=retry_delay(),
        )

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        """Requests in progress: the `gateway.requests.in_flight` gauge's callback."""
        del options
        return [Observation(self.requests)]


class Lease:
    """One request's place in the bound, and the bytes it holds now."""

    __slots__ = ("_holding", "_in_flight", "_open", "_tenant", "bytes")

    def __init__(
        self, in_flight: InFlight, tenant: str, holding: _Holding, body_bytes: int
    ) -> None:
        self._in_flight = in_flight
        self._tenant = tenant
        self._holding = holding
        self.bytes = body_bytes
        self._open = True

    def grow(self, more: int) -> None:
        """The request holds `more` bytes; raise Overloaded (or TenantOverloaded)
        when they do not fit."""
        in_flight, holding = self._in_flight, self._holding
        # Counted as if this request were not in yet: alone, it may hold what
        # its own size limit allows.
        in_flight.requests -= 1
        holding.requests -= 1
        try:
            in_flight._take(holding, self._tenant, more)
        finally:
            in_flight.requests += 1
            holding.requests += 1
        self.bytes += more

    def shrink(self, fewer: int) -> None:
        """The request let go of `fewer` bytes."""
        fewer = min(fewer, self.bytes)
        self._in_flight.bytes -= fewer
        self._holding.bytes -= fewer
        self.bytes -= fewer

    def release(self) -> None:
        """The request is done (idempotent)."""
        if self._open:
            self._open = False
            in_flight, holding = self._in_flight, self._holding
            in_flight.requests -= 1
            in_flight.bytes -= self.bytes
            holding.requests -= 1
            holding.bytes -= self.bytes
            self.bytes = 0
            in_flight._forget_if_idle(self._tenant, holding)
