"""A gRPC server in its own process that streams a lot and notices cancellations.

Run as `python stream_server.py`: it prints its port and the port of a control server
(`Stats`: calls started, cancelled and ended so far), then serves until stdin closes. Eight
worker threads, as in a small production server: a call the client abandons without it
being cancelled keeps one of them busy.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc

SERVICE = "test.Big"
CHUNK = b"x" * 65_536
CHUNKS = 320  # 20 MiB per stream
WORKERS = 8

_lock = threading.Lock()
_started = 0
_cancelled = 0
_ended = 0


def _watch(context: grpc.ServicerContext) -> threading.Event:
    """An event set when the call ends; a call that ends before it finished was cancelled."""
    global _started
    ended = threading.Event()
    finished = threading.Event()

    def on_end() -> None:
        global _cancelled, _ended
        with _lock:
            _ended += 1
            if not finished.is_set():
                _cancelled += 1
        ended.set()

    with _lock:
        _started += 1
    if not context.add_callback(on_end):  # the call is over already
        on_end()
    ended.finished = finished  # type: ignore[attr-defined]
    return ended


def _stream(context: grpc.ServicerContext) -> Iterator[bytes]:
    ended = _watch(context)
    for _ in range(CHUNKS):
        yield CHUNK
    ended.finished.set()  # type: ignore[attr-defined]


def big(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    """Unary-stream: 20 MiB."""
    yield from _stream(context)


def big_bidi(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    """Stream-stream: 20 MiB after the first request."""
    next(requests)
    yield from _stream(context)


def _wait_for_cancel(context: grpc.ServicerContext) -> bytes:
    ended = _watch(context)
    ended.wait(60)  # the client abandons the call; its cancellation ends the wait
    ended.finished.set()  # type: ignore[attr-defined]
    return b"late"


def slow(request: bytes, context: grpc.ServicerContext) -> bytes:
    """Unary-unary: answers only after a minute."""
    return _wait_for_cancel(context)


def slow_upload(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
    """Stream-unary: answers only after a minute."""
    next(requests)
    return _wait_for_cancel(context)


def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    """Unary-unary: the request."""
    return request


def stats(request: bytes, context: grpc.ServicerContext) -> bytes:
    """Calls started, cancelled by their client and ended so far: `started,cancelled,ended`."""
    with _lock:
        return b"%d,%d,%d" % (_started, _cancelled, _ended)


HANDLERS = {
    "Big": grpc.unary_stream_rpc_method_handler(big),
    "BigBidi": grpc.stream_stream_rpc_method_handler(big_bidi),
    "Slow": grpc.unary_unary_rpc_method_handler(slow),
    "SlowUpload": grpc.stream_unary_rpc_method_handler(slow_upload),
    "Echo": grpc.unary_unary_rpc_method_handler(echo),
}


def _serve(workers: int, handlers: dict[str, grpc.RpcMethodHandler]) -> tuple[grpc.Server, int]:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers), options=[("grpc.so_reuseport", 0)]
    )
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def main() -> None:
    server, port = _serve(WORKERS, HANDLERS)
    control, control_port = _serve(2, {"Stats": grpc.unary_unary_rpc_method_handler(stats)})
    print(port, control_port, flush=True)
    sys.stdin.read()
    server.stop(None)
    control.stop(None)


if __name__ == "__main__":
    main()
