"""The request chain, the same for every transport, owned here and nowhere else.

    authenticate → in-flight bound → admit → read and decode → ingest → count

Adapters (gateway.grpc_server, gateway.otlp_http, gateway.legacy) gather the
request's credentials, say how their body is read and decoded, and turn the
`Outcome` into their protocol's answer; none of them calls a step itself. The
in-flight bound (of the gateway, and the tenant's share of it) is taken before
the body is read or decompressed: a `Body` reads under the request's `Lease`, so
what bodies hold in memory counts against the bound as it arrives
(gateway.inflight), and at a `BodyPace`, so a caller that sends slowly or not at
all lets go of its place in time. What a request costs the event loop
(decompressing, decoding, checking) is done in slices and charged to its
tenant's work budget (gateway.work).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from gateway.auth import Authenticator, Credentials
from gateway.errors import BodyTimeout, GatewayError, RequestTooLarge, Unauthenticated
from gateway.inflight import InFlight, Lease, retry_delay
from gateway.ingest import Ingestor
from gateway.limits import TenantLimits
from gateway.telemetry import GatewayMetrics
from gateway.tenants import Tenant
from gateway.work import Work

logger = logging.getLogger(__name__)

UNKNOWN_TENANT = "unknown"
"""The tenant_id label of a request refused before it was authenticated."""
TENANT_HEADER = "x-otel-tenant"
"""Response header (HTTP) and trailing metadata (gRPC) naming the tenant the data was
stored under: `otel-agents check` shows it."""


@dataclass(frozen=True)
class BodyPace:
    """How long a body may take to arrive: `grace_seconds`, plus its bytes at
    `min_bytes_per_second` (settings body_timeout_seconds, body_min_bytes_per_second)."""

    grace_seconds: float = 10.0
    min_bytes_per_second: float = 128 * 1024

    def seconds_for(self, size: int) -> float:
        """The time allowed for `size` bytes, from the moment reading began."""
        return self.grace_seconds + size / self.min_bytes_per_second

    def too_slow(self, received: int, waited: float) -> BodyTimeout:
        """The refusal of a body that is late, with `received` bytes after `waited` s."""
        return BodyTimeout(
            f"the request body came too slowly ({received} bytes after {waited:.0f} s; a body "
            f"gets {self.grace_seconds:g} s plus its bytes at {self.min_bytes_per_second:g} "
            "bytes/s: settings body_timeout_seconds, body_min_bytes_per_second); retry from a "
            "faster link or send smaller requests",
            retry_after_seconds=retry_delay(),
        )


class Body(Protocol):
    """A request body as its transport has it, read under the in-flight bound."""

    @property
    def size_hint(self) -> int:
        """Bytes known before reading: the whole body (gRPC), Content-Length, or 0."""
        ...

    async def read(
        self, lease: Lease, limit: int, pace: BodyPace, work: Work, max_gzip_members: int
    ) -> bytes:
        """The body, decompressed, at most `limit` bytes (else RequestTooLarge);
        every byte it comes to hold is taken into `lease` first; arriving at `pace`
        (else BodyTimeout); decompressing is done in slices of `work`."""
        ...


@dataclass(frozen=True)
class BytesBody:
    """A body the transport has already read (gRPC)."""

    data: bytes

    @property
    def size_hint(self) -> int:
        """All of it."""
        return len(self.data)

    async def read(
        self, lease: Lease, limit: int, pace: BodyPace, work: Work, max_gzip_members: int
    ) -> bytes:
        """The bytes (the lease holds them since the request entered)."""
        del lease, pace, work, max_gzip_members
        if len(self.data) > limit:
            raise RequestTooLarge.over(limit, len(self.data))
        return self.data


@dataclass(frozen=True)
class Decoding:
    """What a transport's decoder is given besides the body."""

    tenant: Tenant
    limits: TenantLimits
    work: Work
    """The request's work: a decoder of large bodies runs in its slices and adds its time."""


Decode = Callable[[Decoding, bytes], Awaitable[ExportMetricsServiceRequest]]
"""The transport's body format → an OTLP request (GatewayError when it is not one),
without fields unknown to OTLP: they would reach the Collector unchecked and
unstamped (a newer point type, say)."""
Vet = Callable[[Tenant], None]
"""A transport's own check of an authenticated request, before anything is read."""


@dataclass
class Outcome:
    """How a request ended: the tenant it was counted under, and the answer or refusal."""

    tenant_id: str = UNKNOWN_TENANT
    response: ExportMetricsServiceResponse = field(default_factory=ExportMetricsServiceResponse)
    error: GatewayError | None = None

    @property
    def reason(self) -> str:
        """`accepted`, or the refusal's reason: the `outcome` label it is counted under."""
        return "accepted" if self.error is None else self.error.reason


def _without_frames(error: GatewayError) -> GatewayError:
    cause: BaseException | None = error
    while cause is not None:
        cause.__traceback__ = None
        cause = cause.__cause__ or cause.__context__
    return error


class Chain:
    """Runs every export, whatever its transport, through the same steps in the same order."""

    def __init__(
        self,
        authenticator: Authenticator,
        in_flight: InFlight,
        ingestor: Ingestor,
        metrics: GatewayMetrics,
        pace: BodyPace | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.in_flight = in_flight
        self.ingestor = ingestor
        self.metrics = metrics
        self.pace = pace or BodyPace()

    async def export(
        self,
        transport: str,
        credentials: Credentials,
        body: Body,
        decode: Decode,
        *,
        protobuf: bool = False,
        vet: Vet | None = None,
        max_body_bytes: int | None = None,
    ) -> Outcome:
        """One export, counted under `transport` whatever its outcome.

        `protobuf`: the decoded body is the request's protobuf encoding (ingest may
        then skip the search for tenant claims). `max_body_bytes` caps the body
        below the tenant's `max_request_bytes` (a legacy report is small).
        """
        outcome = Outcome()
        lease: Lease | None = None
        work = Work()
        try:
            tenant = self.authenticator.tenant(credentials)
            outcome.tenant_id = tenant.id
            if vet is not None:
                vet(tenant)
            lease = self.in_flight.enter(body.size_hint, tenant.id)
            limits = self.ingestor.admit(tenant, body.size_hint, work)
            limit = limits.max_request_bytes
            if max_body_bytes is not None:
                limit = min(limit, max_body_bytes)
            raw = await body.read(lease, limit, self.pace, work, limits.max_gzip_members)
            request = await decode(Decoding(tenant, limits, work), raw)
            outcome.response = await self.ingestor.ingest(
                tenant, request, raw if protobuf else None, work
            )
        except GatewayError as exc:
            # The answer is written after the lease is let go: a refusal must not
            # keep the frames that held the body (a traceback refers to them).
            outcome.error = _without_frames(exc)
        except Exception:
            logger.exception(
                "unexpected error handling a %s export for tenant %s", transport, outcome.tenant_id
            )
            outcome.error = GatewayError("unexpected gateway error; the request was not stored")
        finally:
            if lease is not None:
                lease.release()
        self.count(transport, outcome)
        return outcome

    def count(self, transport: str, outcome: Outcome) -> None:
        """Count one finished request (and its refusal reason, if any)."""
        metrics, tenant_id, error = self.metrics, outcome.tenant_id, outcome.error
        metrics.requests.add(
            1, {"tenant_id": tenant_id, "transport": transport, "outcome": outcome.reason}
        )
        if tenant_id != UNKNOWN_TENANT:
            self.ingestor.usage.request(tenant_id, None if error is None else error.reason)
        if error is not None:
            metrics.rejections.add(1, {"tenant_id": tenant_id, "reason": error.reason})
            if isinstance(error, Unauthenticated):
                metrics.auth_failures.add(1, {"transport": transport, "reason": error.cause})
