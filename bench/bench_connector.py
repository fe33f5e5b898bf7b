"""What counting costs a connector: per batch, and per gRPC call.

Run: `.venv/bin/python -m bench.bench_connector` (about 20 s). Variants are measured
side by side: each round runs every variant once, in a rotating order, so that drift
and bursts of load from other processes hit all of them alike; figures are medians
over the rounds. Wall time is what the caller waits; CPU time is this process's, all
threads (in-process gRPC server included), the better measure of cost on a busy
machine. Prints µs per operation and the overhead over the first variant; asserts
nothing.
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa  # type: ignore[import-untyped]  # no stubs
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_agents.arrow import ipc_row_count
from otel_agents.connector import ConnectorMetrics
from otel_agents.grpc_instrumentation import ClientInterceptor, ServerInterceptor

SERVICE = "bench.Upstream"
Variants = dict[str, Callable[[], None]]


RESULTS = Path(__file__).resolve().parent / "results" / "bench_connector.json"
# Every table's medians, by title then variant: written to RESULTS by main().
FIGURES: dict[str, dict[str, dict[str, float]]] = {}


def measure(title: str, variants: Variants, per_run: int, rounds: int) -> None:
    """Run each variant (`per_run` operations per run) `rounds` times and print medians."""
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_number in range(rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            wall_start, cpu_start = time.perf_counter_ns(), time.process_time_ns()
            variants[name]()
            cpu[name].append((time.process_time_ns() - cpu_start) / per_run / 1000)
            wall[name].append((time.perf_counter_ns() - wall_start) / per_run / 1000)
    print(f"\n{title} (medians of {rounds} rounds of {per_run})")
    print(f"  {'variant':<36}{'wall µs/op':>12}{'overhead':>10}{'CPU µs/op':>12}{'overhead':>10}")
    base_wall, base_cpu = (statistics.median(wall[names[0]]), statistics.median(cpu[names[0]]))
    for name in names:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        FIGURES.setdefault(title, {})[name] = {"wall_us": w, "cpu_us": c}
        print(
            f"  {name:<36}{w:12.3f}{_overhead(w, base_wall):>10}"
            f"{c:12.3f}{_overhead(c, base_cpu):>10}"
        )


def _overhead(value: float, base: float) -> str:
    return "" if value == base else f"x{value / base:.2f}"


# -- per batch ----------------------------------------------------------------------------


def bench_record_batch() -> None:
    """The plain loop, ConnectorMetrics.record_batch, and two SDK Counter.add per batch."""
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    meter = provider.get_meter("bench")
    metrics = ConnectorMetrics(meter)
    rows_counter = meter.create_counter("bench.records")
    bytes_counter = meter.create_counter("bench.bytes")
    batches = [(100 + i % 900, 4_000 + i % 60_000) for i in range(20_000)]

    def plain() -> None:
        total = 0
        for rows, nbytes in batches:
            total += rows + nbytes  # stands for the connector's own per-batch work

    def record_batch() -> None:
        total = 0
        for rows, nbytes in batches:
            total += rows + nbytes
            metrics.record_batch(rows, nbytes)

    def sdk_counters() -> None:
        total = 0
        for rows, nbytes in batches:
            total += rows + nbytes
            rows_counter.add(rows)
            bytes_counter.add(nbytes)

    variants = {
        "plain loop": plain,
        "+ record_batch": record_batch,
        "+ 2 x SDK Counter.add (before)": sdk_counters,
    }
    measure("Per batch", variants, len(batches), rounds=15)
    provider.shutdown()


# -- per gRPC call ------------------------------------------------------------------------


def ipc_payload(rows: int) -> bytes:
    """An Arrow IPC stream with one `rows`-row batch, as a connector sends."""
    batch = pa.record_batch({"id": pa.array(range(rows)), "v": pa.array([1.5] * rows)})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return bytes(sink.getvalue().to_pybytes())


class PassThrough(grpc.UnaryUnaryClientInterceptor, grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Intercepts and does nothing: what gRPC's interception machinery costs by itself."""

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        """Continue the call."""
        return continuation(details, request)

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        """Serve with the method's own handler."""
        return continuation(handler_call_details)


def _accept(request: bytes, context: object) -> bytes:
    return b"accepted"


HANDLER = grpc.unary_unary_rpc_method_handler(_accept)


def start_server(interceptor: Any | None) -> tuple[grpc.Server, int]:
    """A loopback server answering each payload with 8 bytes."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[interceptor] if interceptor else [],
        options=[("grpc.so_reuseport", 0)],
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(SERVICE, {"Put": HANDLER})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def bench_grpc_calls(payload: bytes) -> None:
    """Unary calls on loopback: plain, gRPC's interception alone, instrumented."""
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    client_metrics = ConnectorMetrics(provider.get_meter("client"))
    server_metrics = ConnectorMetrics(provider.get_meter("server"))
    setups = {
        "plain": (None, None),
        "pass-through interceptors": (PassThrough(), PassThrough()),
        "counting (bytes)": (ClientInterceptor(client_metrics), ServerInterceptor(server_metrics)),
        "counting (bytes + Arrow rows)": (
            ClientInterceptor(client_metrics, records_of=ipc_row_count),
            ServerInterceptor(server_metrics),
        ),
    }
    servers, channels, variants = [], [], {}
    for name, (client_interceptor, server_interceptor) in setups.items():
        server, port = start_server(server_interceptor)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        if client_interceptor is not None:
            channel = grpc.intercept_channel(channel, client_interceptor)
        call = channel.unary_unary(f"/{SERVICE}/Put", None, None)
        for _ in range(200):  # connect and warm up
            call(payload, timeout=5)
        servers.append(server)
        channels.append(channel)
        variants[name] = _calls(call, payload, 100)
    measure(f"Per unary gRPC call, {len(payload)} B payload, loopback", variants, 100, rounds=30)
    for channel in channels:
        channel.close()
    for server in servers:
        server.stop(None)
    provider.shutdown()


def _calls(call: Callable[..., bytes], payload: bytes, count: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(count):
            call(payload, timeout=5)

    return run


# -- the interceptors' own code, without gRPC ---------------------------------------------


class _Done:
    """A finished call, as gRPC hands it to a client interceptor."""

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        callback(self)

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OK


class _Context:
    def code(self) -> None:
        return None


def bench_interceptor_code(payload: bytes) -> None:
    """Each side's counting code per call, with gRPC replaced by stand-ins."""
    metrics = ConnectorMetrics(MeterProvider().get_meter("alone"))
    done, context = _Done(), _Context()
    client = ClientInterceptor(metrics)
    client_rows = ClientInterceptor(metrics, records_of=ipc_row_count)
    server = ServerInterceptor(metrics)
    count = 20_000

    def continuation(details: Any, request: Any) -> _Done:
        return done

    def repeat(action: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(count):
                action()

        return run

    def served() -> bytes:
        handler = server.intercept_service(lambda details: HANDLER, None)
        serialize = handler.response_serializer
        return bytes(serialize(handler.unary_unary(payload, context)))

    variants = {
        "call the continuation only": repeat(lambda: continuation(None, payload)),
        "client: bytes": repeat(lambda: client.intercept_unary_unary(continuation, None, payload)),
        "client: bytes + Arrow rows": repeat(
            lambda: client_rows.intercept_unary_unary(continuation, None, payload)
        ),
        "server: wrap handler, serve, serialize": repeat(served),
    }
    measure("Interceptor code alone, per call", variants, count, rounds=9)


def main() -> None:
    """Run every benchmark and print the figures."""
    started = time.monotonic()
    print(f"Python {sys.version.split()[0]}, grpcio {grpc.__version__}, pyarrow {pa.__version__}")
    payload = ipc_payload(1_000)
    bench_record_batch()
    bench_interceptor_code(payload)
    bench_grpc_calls(payload)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"python": sys.version.split()[0], "tables": FIGURES}, indent=2))
    print(f"\n({time.monotonic() - started:.0f} s; figures in {RESULTS})")


if __name__ == "__main__":
    main()
