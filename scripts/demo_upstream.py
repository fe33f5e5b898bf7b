"""The demo connector's upstream: a gRPC server that receives Arrow IPC record batches.

Raw bytes through generic handlers, no generated code: `/demo.Upstream/Upload` takes a
client stream of Arrow IPC stream payloads, `/demo.Upstream/Put` a single one; both
answer the number of rows received, in ASCII. About 3 % of calls are refused with
UNAVAILABLE, so that the connectors' `connector_errors_total` moves too.

Run: `python -m scripts.demo_upstream`, listening on DEMO_UPSTREAM_ADDRESS
(default 127.0.0.1:50051) until SIGTERM or SIGINT.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
from collections.abc import Iterable
from concurrent import futures

import grpc
import pyarrow as pa  # type: ignore[import-untyped]  # no stubs

ADDRESS_ENV = "DEMO_UPSTREAM_ADDRESS"
DEFAULT_ADDRESS = "127.0.0.1:50051"
SERVICE = "demo.Upstream"
UPLOAD = f"/{SERVICE}/Upload"
PUT = f"/{SERVICE}/Put"
FAILURE_RATE = 0.03

_logger = logging.getLogger("demo-upstream")


class Upstream:
    """The handlers; `rows` is the total received, for tests and the log."""

    def __init__(self, failure_rate: float = FAILURE_RATE, seed: int | None = None) -> None:
        """Refuse `failure_rate` of the calls, chosen by a random generator seeded with `seed`."""
        self.failure_rate = failure_rate
        self.rows = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def upload(self, payloads: Iterable[bytes], context: grpc.ServicerContext) -> bytes:
        """A client stream of IPC payloads."""
        self._maybe_refuse(context)
        return self._receive(payloads, context)

    def put(self, payload: bytes, context: grpc.ServicerContext) -> bytes:
        """One IPC payload."""
        self._maybe_refuse(context)
        return self._receive([payload], context)

    def _maybe_refuse(self, context: grpc.ServicerContext) -> None:
        with self._lock:
            refuse = self._rng.random() < self.failure_rate
        if refuse:
            context.abort(grpc.StatusCode.UNAVAILABLE, "demo upstream: simulated outage")

    def _receive(self, payloads: Iterable[bytes], context: grpc.ServicerContext) -> bytes:
        rows = 0
        for payload in payloads:
            try:
                table = pa.ipc.open_stream(payload).read_all()  # reads and checks the data
            except (pa.ArrowException, ValueError) as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not an Arrow IPC stream: {exc}")
            rows += table.num_rows
        with self._lock:
            self.rows += rows
        return str(rows).encode()


def serve(address: str, upstream: Upstream) -> tuple[grpc.Server, int]:
    """Start serving `upstream` on `address` (port 0: any free port); returns the port."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        # Two upstreams on one port would split the calls silently.
        options=[("grpc.so_reuseport", 0)],
    )
    handlers = {
        "Upload": grpc.stream_unary_rpc_method_handler(upstream.upload),
        "Put": grpc.unary_unary_rpc_method_handler(upstream.put),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_insecure_port(address)
    server.start()
    return server, port


def main() -> None:
    """Serve until SIGTERM or SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    address = os.environ.get(ADDRESS_ENV, DEFAULT_ADDRESS)
    upstream = Upstream()
    server, port = serve(address, upstream)
    _logger.info(
        "listening on %s (port %d), refusing %.0f %% of calls", address, port, FAILURE_RATE * 100
    )
    while not stop.wait(30):
        _logger.info("%d rows received so far", upstream.rows)
    server.stop(grace=2).wait()
    _logger.info("stopped after %d rows", upstream.rows)


if __name__ == "__main__":
    main()
