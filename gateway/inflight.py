"""The gateway's bound on work in progress: requests and bytes being handled.

Past the bound a request is refused at once with a retryable status (gRPC
RESOURCE_EXHAUSTED with RetryInfo, HTTP 503 with Retry-After): exporters back
off and deliver later, and the gateway's memory stays bounded however hard it
is pushed or however slowly the Collector answers.
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
    """Counts requests in and out; refuses one that would exceed either limit."""

    def __init__(self, max_requests: int, max_bytes: int) -> None:
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.requests = 0
        self.bytes = 0

    def enter(self, body_bytes: int) -> None:
        """Take a request of `body_bytes` in; raise Overloaded when there is no room."""
        if self.requests >= self.max_requests or (
            self.requests and self.bytes + body_bytes > self.max_bytes
        ):
            raise Overloaded(
                f"the gateway is at capacity ({self.requests} requests, {self.bytes} bytes "
                f"in progress; settings max_in_flight_requests={self.max_requests}, "
                f"max_in_flight_bytes={self.max_bytes}); retry later or add gateway replicas",
                retry_after_seconds=round(random.uniform(*RETRY_SECONDS), 1),  # noqa: S311 jitter
            )
        self.requests += 1
        self.bytes += body_bytes

    def exit(self, body_bytes: int) -> None:
        """A request taken in by `enter` is done."""
        self.requests -= 1
        self.bytes -= body_bytes

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        """Requests in progress: the `gateway.requests.in_flight` gauge's callback."""
        del options
        return [Observation(self.requests)]
