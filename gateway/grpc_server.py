"""OTLP/gRPC transport adapter: MetricsService/Export → authenticate → ingest."""

from __future__ import annotations

import logging

import grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceResponse,
)

from gateway.app import Gateway
from gateway.auth import Credentials
from gateway.errors import GatewayError

logger = logging.getLogger(__name__)

SERVICE = "opentelemetry.proto.collector.metrics.v1.MetricsService"
UNKNOWN_TENANT = "unknown"


class MetricsExportHandler:
    """Handles Export calls with the raw request bytes, so that a malformed body is
    answered INVALID_ARGUMENT by the gateway rather than INTERNAL by grpcio."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def export(
        self, body: bytes, context: grpc.aio.ServicerContext[bytes, ExportMetricsServiceResponse]
    ) -> ExportMetricsServiceResponse:
        """One Export call; refusals end the call with the error's gRPC status."""
        gateway = self._gateway
        tenant_id = UNKNOWN_TENANT
        error: GatewayError | None = None
        response = ExportMetricsServiceResponse()
        gateway.telemetry.metrics.in_flight.add(1)
        try:
            tenant = gateway.authenticator.authenticate(
                Credentials(_header(context, "authorization"), peer=context.peer())
            )
            tenant_id = tenant.id
            gateway.ingestor.admit(tenant, len(body))
            request = gateway.ingestor.decode(body)
            response = await gateway.ingestor.ingest(tenant, request)
        except GatewayError as exc:
            error = exc
        except Exception:
            logger.exception("unexpected error handling an export for tenant %s", tenant_id)
            error = GatewayError("unexpected gateway error; the request was not stored")
        finally:
            gateway.telemetry.metrics.in_flight.add(-1)
        gateway.count_outcome("grpc", tenant_id, error)
        if error is not None:
            await context.abort(error.grpc_status, str(error))
        return response


def _header(
    context: grpc.aio.ServicerContext[bytes, ExportMetricsServiceResponse], name: str
) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


def create_grpc_server(gateway: Gateway) -> tuple[grpc.aio.Server, int]:
    """A server with the Export handler bound to the configured address; and its port."""
    settings = gateway.settings
    handler = MetricsExportHandler(gateway)
    server = grpc.aio.server(
        options=[
            # grpcio shares ports between servers by default (SO_REUSEPORT): a
            # second gateway on the same port must fail, not split the traffic.
            ("grpc.so_reuseport", 0),
            # The gateway checks the limit itself (a counted, explained
            # refusal); this is only the transport's hard stop.
            ("grpc.max_receive_message_length", settings.max_request_bytes * 2),
        ]
    )
    rpc = grpc.unary_unary_rpc_method_handler(
        handler.export,
        request_deserializer=None,
        response_serializer=ExportMetricsServiceResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Export": rpc}),)
    )
    port = server.add_insecure_port(f"{settings.grpc_host}:{settings.grpc_port}")
    return server, port
