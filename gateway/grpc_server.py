"""OTLP/gRPC transport adapter: MetricsService/Export → the chain (gateway.chain) → a status.

The adapter gathers the call's credentials and maps the outcome to gRPC: a status
with RetryInfo when the refusal may be retried, the tenant in trailing metadata.

Export is registered as a client-streaming method (the same on the wire as a
unary one): the handler runs as soon as the call's headers arrive, so a call
without a valid credential, or of a tenant over its cap of calls at that
address, is ended before its message is awaited, and an authenticated one
awaits its message under the chain's body deadline, holding its place in the
in-flight bound meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.duration_pb2 import Duration
from google.rpc.error_details_pb2 import RetryInfo  # type: ignore[import-untyped]
from google.rpc.status_pb2 import Status  # type: ignore[import-untyped]
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceResponse,
)

from gateway.app import Gateway
from gateway.auth import Credentials, authorization_from
from gateway.chain import TENANT_HEADER, BodyPace, Chain
from gateway.decode import decode_protobuf
from gateway.errors import GatewayError, InvalidRequest, RequestTooLarge
from gateway.inflight import Lease
from gateway.peers import PeerCounts
from gateway.tenants import Tenant
from gateway.tls import client_certificate_from_grpc, grpc_server_credentials
from gateway.work import Work

SERVICE = "opentelemetry.proto.collector.metrics.v1.MetricsService"
TRANSPORT = "grpc"
RECEIVE_SECONDS_PER_MIB = 0.0005
"""Event-loop time grpcio takes to copy a received message into Python bytes, per
MiB: in one go, before the handler sees it (4-14 ms for 7.2 MB on 2 shared cores;
this is below the fastest). It cannot be sliced; it is charged to the tenant."""
MIB = 1024 * 1024


class MessageBody:
    """The call's one request message, awaited when the chain reads it (after
    authentication and the in-flight lease), as raw bytes: a malformed message is
    answered INVALID_ARGUMENT by the gateway rather than INTERNAL by grpcio."""

    def __init__(self, context: grpc.aio.ServicerContext[bytes, ExportMetricsServiceResponse]):
        self._context = context

    @property
    def size_hint(self) -> int:
        """Unknown until the message has arrived."""
        return 0

    async def read(
        self, lease: Lease, limit: int, pace: BodyPace, work: Work, max_gzip_members: int
    ) -> bytes:
        """The message, taken into `lease`; at most `limit` bytes. grpcio hands it
        over whole (decompressed, if the client compressed it), so it gets the time
        `pace` allows for `limit` bytes; its copy costs the tenant's `work`."""
        del max_gzip_members
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(pace.seconds_for(limit)):
                message = await self._context.read()
        except TimeoutError as exc:
            raise pace.too_slow(0, loop.time() - started) from exc
        if not isinstance(message, bytes):  # grpc.aio.EOF: the client sent none
            raise InvalidRequest("the call ended without a request message")
        work.add(len(message) * RECEIVE_SECONDS_PER_MIB / MIB)
        if len(message) > limit:
            raise RequestTooLarge.over(limit, len(message))
        lease.grow(len(message))
        return message


class MetricsExportHandler:
    """Export calls, run through the chain; refusals end the call with their status."""

    def __init__(self, chain: Chain, peers: PeerCounts) -> None:
        self._chain = chain
        self._peers = peers
        self._certificates = chain.authenticator.certificates is not None

    async def export(
        self,
        requests: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext[bytes, ExportMetricsServiceResponse],
    ) -> ExportMetricsServiceResponse:
        """One Export call; refusals end the call with the error's gRPC status."""
        del requests  # read through the context, under the chain's deadline
        peer = context.peer()
        held: list[tuple[str, str] | None] = []

        def vet(tenant: Tenant) -> None:
            # Counted once the credential is known: a call without one is refused at
            # once and holds nothing; a tenant's calls waiting for their message take
            # its own allowance at this address, not another tenant's there.
            held.append(self._peers.enter(peer, tenant.id))

        credentials = Credentials(
            authorization_from(
                value
                for key, value in context.invocation_metadata() or ()
                if key == "authorization"
            ),
            peer=peer,
            client_certificate=(
                client_certificate_from_grpc(context.auth_context()) if self._certificates else None
            ),
        )
        try:
            outcome = await self._chain.export(
                TRANSPORT,
                credentials,
                MessageBody(context),
                decode_protobuf,
                protobuf=True,
                vet=vet,
            )
        finally:
            for key in held:
                self._peers.leave(key)
        if outcome.error is not None:
            code, details, trailers = grpc_status(outcome.error)
            await context.abort(code, details, trailing_metadata=trailers)
        # Trailing metadata travels with the status; initial metadata would
        # cost one more round of gRPC operations per call (~35 µs).
        context.set_trailing_metadata(((TENANT_HEADER, outcome.tenant_id),))
        return outcome.response


Trailers = tuple[tuple[str, bytes], ...]


def grpc_status(error: GatewayError) -> tuple[grpc.StatusCode, str, Trailers]:
    """The gRPC form of a refusal: status, message, and RetryInfo when it may be retried.

    The OpenTelemetry Python exporter reads the delay only from
    `google.rpc.retryinfo-bin`; Go and Java read the google.rpc.Status in
    `grpc-status-details-bin`: both are sent.
    """
    details = str(error)
    if error.retry_after_seconds is None:
        return error.grpc_status, details, ()
    seconds = error.retry_after_seconds
    info = RetryInfo(retry_delay=Duration(seconds=int(seconds), nanos=int(seconds % 1 * 1e9)))
    detail = AnyProto()
    detail.Pack(info)
    status = Status(code=error.grpc_status.value[0], message=details, details=[detail])
    return (
        error.grpc_status,
        details,
        (
            ("google.rpc.retryinfo-bin", info.SerializeToString()),
            ("grpc-status-details-bin", status.SerializeToString()),
        ),
    )


def create_grpc_server(gateway: Gateway) -> tuple[grpc.aio.Server, int]:
    """A server with the Export handler bound to the configured address; and its port."""
    settings = gateway.settings
    peers = PeerCounts(settings.max_grpc_calls_per_peer, "gRPC calls", "max_grpc_calls_per_peer")
    handler = MetricsExportHandler(gateway.chain, peers)
    # No `maximum_concurrent_rpcs`: grpcio's own refusal carries no RetryInfo
    # (exporters drop the data) and counts calls still waiting for their
    # message. The handler runs at once for every call and the gateway's own
    # bounds refuse, retryably: calls per address, the credential, the in-flight
    # bound and each tenant's share of it, the message's deadline.
    server = grpc.aio.server(
        options=[
            # grpcio shares ports between servers by default (SO_REUSEPORT): a
            # second gateway on the same port must fail, not split the traffic,
            # unless several gateway processes are meant to share it.
            ("grpc.so_reuseport", int(settings.grpc_reuse_port)),
            # The gateway checks the limit itself (a counted, explained
            # refusal); this is only the transport's hard stop.
            ("grpc.max_receive_message_length", settings.max_request_bytes * 2),
        ],
    )
    rpc = grpc.stream_unary_rpc_method_handler(
        handler.export,
        request_deserializer=None,
        response_serializer=ExportMetricsServiceResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Export": rpc}),)
    )
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    credentials = grpc_server_credentials(settings)
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    return server, port
