"""instrument_channel: one call gives a connector's channel every connector metric."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pyarrow as pa
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from otel_agents import connector_metrics, setup_metrics
from otel_agents.grpc_instrumentation import instrument_channel

METHOD = "/upstream.Upstream/Send"


def _ipc(rows: int) -> bytes:
    batch = pa.record_batch({"id": pa.array(range(rows), pa.int64())})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return bytes(sink.getvalue().to_pybytes())


def _send(request: bytes, context: grpc.ServicerContext) -> bytes:
    if not request:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty")
    return b"ok"


@pytest.fixture
def upstream() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(2), options=[("grpc.so_reuseport", 0)])
    handler = grpc.unary_unary_rpc_method_handler(_send)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("upstream.Upstream", {"Send": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


def _values(reader: InMemoryMetricReader) -> dict[str, object]:
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, object] = {}
    for metric in data.resource_metrics[0].scope_metrics[0].metrics:
        points = [p for p in metric.data.data_points if isinstance(p, NumberDataPoint)]
        if metric.name == "connector.errors":
            found[metric.name] = {str((p.attributes or {})["error_type"]): p.value for p in points}
        elif metric.name != "connector.uptime":
            [found[metric.name]] = [p.value for p in points]
    return found


def test_one_call_counts_queries_bytes_arrow_records_errors_and_connection(upstream: str) -> None:
    reader = InMemoryMetricReader()
    telemetry = setup_metrics("c", "connector", environ={}, reader=reader, set_global=False)
    metrics = connector_metrics(telemetry)
    channel = instrument_channel(grpc.insecure_channel(upstream), metrics)
    send = channel.unary_unary(METHOD)
    payload = _ipc(25)

    assert send(payload, timeout=5) == b"ok"
    with pytest.raises(grpc.RpcError):
        send(b"", timeout=5)

    deadline = time.monotonic() + 10
    while _values(reader).get("connector.connected") != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _values(reader) == {
        "connector.bytes_sent": len(payload),
        "connector.records_sent": 25,
        "connector.queries_processed": 2,
        "connector.errors": {"rejected": 1},
        "connector.connected": 1,
    }
    channel.close()
    assert telemetry.shutdown()
