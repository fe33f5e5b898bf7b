"""OTLP/gRPC transport adapter: MetricsService/Export → the chain (gateway.chain) → a status.

The adapter gathers the call's credentials and maps the outcome to gRPC: a status
with RetryInfo when the refusal may be retried, the tenant in trailing metadata.
"""

from __future__ import annotations

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
from gateway.chain import TENANT_HEADER, BytesBody, Chain
from gateway.decode import decode_protobuf
from gateway.errors import GatewayError
from gateway.tls import client_certificate_from_grpc, grpc_server_credentials

SERVICE = "opentelemetry.proto.collector.metrics.v1.MetricsService"
TRANSPORT = "grpc"


class MetricsExportHandler:
    """Export calls with the raw request bytes (so that a malformed body is answered
    INVALID_ARGUMENT by the gateway rather than INTERNAL by grpcio), run through the chain."""

    def __init__(self, chain: Chain) -> None:
        self._chain = chain
        self._certificates = chain.authenticator.certificates is not None

    async def export(
        self, body: bytes, context: grpc.aio.ServicerContext[bytes, ExportMetricsServiceResponse]
    ) -> ExportMetricsServiceResponse:
        """One Export call; refusals end the call with the error's gRPC status."""
        credentials = Credentials(
            authorization_from(
                value
                for key, value in context.invocation_metadata() or ()
                if key == "authorization"
            ),
            peer=context.peer(),
            client_certificate=(
                client_certificate_from_grpc(context.auth_context()) if self._certificates else None
            ),
        )
        outcome = await self._chain.export(
            TRANSPORT, credentials, BytesBody(body), decode_protobuf, protobuf=True
        )
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
    handler = MetricsExportHandler(gateway.chain)
    server = grpc.aio.server(
        # The in-flight bound refuses politely (RetryInfo, counted); this is the
        # hard stop for calls that arrive faster than the handler can refuse them.
        maximum_concurrent_rpcs=settings.max_in_flight_requests * 4,
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
    rpc = grpc.unary_unary_rpc_method_handler(
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
