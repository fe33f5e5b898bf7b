"""The bare Python gRPC hop (FACTS.md): OTLP/gRPC in, the same bytes out to the Collector.

No authentication, no parsing, no limits: a grpc.aio server whose generic
handler takes the request as bytes (`request_deserializer=None`) and awaits a
client call that sends those bytes as they are. What any Python gRPC gateway
pays before doing any work of its own.

Run: `python -m bench.baselines.bare_hop --listen 127.0.0.1:4317 --collector 127.0.0.1:14317`
(SIGTERM or Ctrl-C stops it).
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc

SERVICE = "opentelemetry.proto.collector.metrics.v1.MetricsService"
METHOD = f"/{SERVICE}/Export"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
FORWARD_TIMEOUT_SECONDS = 5.0


async def serve(listen: str, collector: str) -> None:
    """Forward every Export on `listen` to `collector` until SIGTERM or SIGINT."""
    channel = grpc.aio.insecure_channel(
        collector, options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
    )
    export = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)

    async def handle(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        try:
            answer: bytes = await export(request, timeout=FORWARD_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details() or "")
        return answer

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Export": grpc.unary_unary_rpc_method_handler(
                handle, request_deserializer=None, response_serializer=None
            )
        },
    )
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ]
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(listen)
    await server.start()
    print(f"bare hop: {listen} -> {collector}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)
    await channel.close(None)


def main() -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="host:port to serve OTLP/gRPC on")
    parser.add_argument("--collector", required=True, help="host:port of the Collector's OTLP")
    args = parser.parse_args()
    asyncio.run(serve(args.listen, args.collector))


if __name__ == "__main__":
    main()
