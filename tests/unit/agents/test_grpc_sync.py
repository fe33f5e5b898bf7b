"""Sync gRPC interceptors against a real in-process server: what each side counts."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.wrappers_pb2 import BytesValue
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from otel_agents import AgentTelemetry, connector_metrics, setup_metrics
from otel_agents.connector import ConnectorMetrics, error_type_of
from otel_agents.grpc_instrumentation import (
    ClientInterceptor,
    ServerInterceptor,
    message_size,
    watch_connectivity,
)

SERVICE = "test.Echo"


def records_of(message: bytes | BytesValue) -> int:
    """Test payloads are comma-separated records."""
    payload = message.value if isinstance(message, BytesValue) else message
    return payload.count(b",") + 1 if payload else 0


@dataclass
class Side:
    """One side's telemetry, and a semaphore released each time it counts a call."""

    telemetry: AgentTelemetry
    reader: InMemoryMetricReader
    metrics: ConnectorMetrics
    ends: threading.Semaphore

    @classmethod
    def create(cls, name: str) -> Side:
        reader = InMemoryMetricReader()
        t = setup_metrics(name, "connector", environ={}, reader=reader, set_global=False)
        metrics = connector_metrics(t)
        ends = threading.Semaphore(0)
        record_query = metrics.record_query

        def counting_record_query() -> None:  # the last step of counting a call
            record_query()
            ends.release()

        metrics.record_query = counting_record_query  # type: ignore[method-assign]
        return cls(t, reader, metrics, ends)

    def wait_ended(self, calls: int = 1) -> None:
        for _ in range(calls):
            assert self.ends.acquire(timeout=10), "the call was not counted"

    def values(self) -> dict[str, object]:
        data = self.reader.get_metrics_data()
        assert data is not None
        found: dict[str, object] = {"errors": {}}
        for metric in data.resource_metrics[0].scope_metrics[0].metrics:
            values = {
                str((p.attributes or {}).get("error_type")): p.value
                for p in metric.data.data_points
                if isinstance(p, NumberDataPoint)
            }
            if metric.name == "connector.errors":
                found["errors"] = values
            elif metric.name.startswith("connector.") and "_" in metric.name:
                [found[metric.name.split(".")[1]]] = values.values()
        return found


def counts(queries: int, nbytes: int, records: int, **errors: int) -> dict[str, object]:
    """Expected values; `errors` by status code name, counted by their error_type."""
    kinds: dict[str, int] = {}
    for code, count in errors.items():
        kinds[error_type_of(code)] = kinds.get(error_type_of(code), 0) + count
    return {
        "queries_processed": queries,
        "bytes_sent": nbytes,
        "records_sent": records,
        "errors": kinds,
    }


def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    if request == b"fail":
        context.abort(grpc.StatusCode.UNAVAILABLE, "upstream down")
    if request == b"boom":
        raise ValueError("handler bug")
    if request == b"missing":
        context.set_code(grpc.StatusCode.NOT_FOUND)
        return b""
    return b",".join(reversed(request.split(b",")))


def unary_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    for i in range(int(request.split(b":")[0])):
        yield b"r%d,x" % i
    if request.endswith(b":fail"):
        context.abort(grpc.StatusCode.UNAVAILABLE, "lost")
    if request.endswith(b":forever"):
        while context.is_active():
            yield b"more"


def stream_unary(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
    received = list(requests)
    if b"fail" in received:
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too much")
    return b"%d" % len(received)


def stream_stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    for request in requests:
        yield request.upper()


def proto_unary(request: BytesValue, context: grpc.ServicerContext) -> BytesValue:
    return BytesValue(value=request.value * 2)


HANDLERS = {
    "Unary": grpc.unary_unary_rpc_method_handler(unary),
    "UnaryStream": grpc.unary_stream_rpc_method_handler(unary_stream),
    "StreamUnary": grpc.stream_unary_rpc_method_handler(stream_unary),
    "StreamStream": grpc.stream_stream_rpc_method_handler(stream_stream),
    "Proto": grpc.unary_unary_rpc_method_handler(
        proto_unary,
        request_deserializer=BytesValue.FromString,
        response_serializer=BytesValue.SerializeToString,
    ),
}


@dataclass
class Stack:
    client: Side
    server: Side
    channel: grpc.Channel
    plain_channel: grpc.Channel
    grpc_server: grpc.Server

    def method(self, kind: str, name: str, channel: grpc.Channel | None = None) -> Any:
        factory = getattr(channel or self.channel, kind)
        return factory(f"/{SERVICE}/{name}")


def start_server(interceptor: ServerInterceptor) -> tuple[grpc.Server, int]:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        interceptors=[interceptor],
        options=[("grpc.so_reuseport", 0)],
    )
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, HANDLERS)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.fixture
def stack() -> Iterator[Stack]:
    client, server_side = Side.create("client"), Side.create("server")
    server, port = start_server(ServerInterceptor(server_side.metrics, records_of=records_of))
    plain = grpc.insecure_channel(f"127.0.0.1:{port}")
    channel = grpc.intercept_channel(
        grpc.insecure_channel(f"127.0.0.1:{port}"),
        ClientInterceptor(client.metrics, records_of=records_of),
    )
    yield Stack(client, server_side, channel, plain, server)
    channel.close()
    plain.close()
    server.stop(None)
    client.telemetry.shutdown()
    server_side.telemetry.shutdown()


def test_a_unary_call_counts_one_query_and_the_messages_each_side_sent(stack: Stack) -> None:
    response = stack.method("unary_unary", "Unary")(b"a,b,c", timeout=5)
    assert response == b"c,b,a"
    assert stack.client.values() == counts(1, 5, 3)
    assert stack.server.values() == counts(1, 5, 3)


@pytest.mark.parametrize(
    ("request_body", "code"),
    [(b"fail", "UNAVAILABLE"), (b"boom", "UNKNOWN"), (b"missing", "NOT_FOUND")],
)
def test_a_failed_call_counts_one_error_and_raises_exactly_as_without_interceptors(
    stack: Stack, request_body: bytes, code: str
) -> None:
    with pytest.raises(grpc.RpcError) as plain:
        stack.method("unary_unary", "Unary", stack.plain_channel)(request_body, timeout=5)
    stack.server.wait_ended()
    with pytest.raises(grpc.RpcError) as intercepted:
        stack.method("unary_unary", "Unary")(request_body, timeout=5)

    assert type(intercepted.value) is type(plain.value)
    assert intercepted.value.code() == plain.value.code()
    assert intercepted.value.details() == plain.value.details()
    assert stack.client.values()["errors"] == {error_type_of(code): 1}
    assert stack.server.values()["errors"] == {error_type_of(code): 2}  # the plain call too


def test_future_and_with_call_are_counted_once(stack: Stack) -> None:
    call = stack.method("unary_unary", "Unary")
    assert call.future(b"x", timeout=5).result() == b"x"
    stack.client.wait_ended()
    response, outcome = call.with_call(b"y", timeout=5)
    assert (response, outcome.code()) == (b"y", grpc.StatusCode.OK)
    with pytest.raises(grpc.RpcError):
        call.future(b"fail", timeout=5).result()
    stack.client.wait_ended()
    assert stack.client.values() == counts(3, 6, 3, UNAVAILABLE=1)


def test_a_response_stream_is_counted_on_both_sides(stack: Stack) -> None:
    responses = list(stack.method("unary_stream", "UnaryStream")(b"4", timeout=5))
    assert len(responses) == 4
    stack.client.wait_ended()
    assert stack.client.values() == counts(1, 1, 1)
    assert stack.server.values() == counts(1, sum(map(len, responses)), 8)


def test_a_response_stream_that_fails_midway(stack: Stack) -> None:
    received = []
    with pytest.raises(grpc.RpcError) as failure:
        received.extend(stack.method("unary_stream", "UnaryStream")(b"1:fail", timeout=5))
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    stack.client.wait_ended()
    assert stack.client.values()["errors"] == {"unavailable": 1}
    assert stack.server.values() == counts(1, len(received[0]), 2, UNAVAILABLE=1)


def test_a_stream_the_client_cancels_is_cancelled_on_both_sides(stack: Stack) -> None:
    call = stack.method("unary_stream", "UnaryStream")(b"1:forever", timeout=10)
    assert next(call) == b"r0,x"
    call.cancel()
    stack.client.wait_ended()
    stack.server.wait_ended()
    assert stack.client.values()["errors"] == {"unavailable": 1}
    assert stack.server.values()["errors"] == {"unavailable": 1}


def test_a_request_stream_counts_each_request_sent(stack: Stack) -> None:
    call = stack.method("stream_unary", "StreamUnary")
    assert call(iter([b"1,2", b"3", b"4,5,6"]), timeout=5) == b"3"
    with pytest.raises(grpc.RpcError):
        call(iter([b"x", b"fail"]), timeout=5)
    assert stack.client.values() == counts(2, 14, 8, RESOURCE_EXHAUSTED=1)
    assert stack.server.values() == counts(2, 1, 1, RESOURCE_EXHAUSTED=1)


@pytest.mark.timeout(20)
def test_streams_stay_lazy_in_both_directions(stack: Stack) -> None:
    # Ping-pong: each request is produced only after the previous answer arrived, which
    # deadlocks if either interceptor read a stream ahead.
    requests: queue.Queue[bytes | None] = queue.Queue()
    requests.put(b"ping")
    responses = stack.method("stream_stream", "StreamStream")(iter(requests.get, None), timeout=10)
    answers = []
    for answer in responses:
        answers.append(answer)
        requests.put(None if len(answers) == 3 else b"ping%d" % len(answers))
    assert answers == [b"PING", b"PING1", b"PING2"]
    stack.client.wait_ended()
    assert stack.client.values() == counts(1, 14, 3)
    assert stack.server.values() == counts(1, 14, 3)


def test_an_unknown_method_is_an_error_for_the_client_only(stack: Stack) -> None:
    with pytest.raises(grpc.RpcError):
        stack.method("unary_unary", "Nope")(b"x", timeout=5)
    assert stack.client.values()["errors"] == {"rejected": 1}  # UNIMPLEMENTED
    assert stack.server.values() == counts(0, 0, 0)


def test_protobuf_messages_are_sized_by_their_serialized_length(stack: Stack) -> None:
    call = stack.channel.unary_unary(
        f"/{SERVICE}/Proto",
        request_serializer=BytesValue.SerializeToString,
        response_deserializer=BytesValue.FromString,
    )
    request = BytesValue(value=b"abc")
    assert call(request, timeout=5).value == b"abcabc"
    assert message_size(request) == len(request.SerializeToString()) == 5
    assert stack.client.values()["bytes_sent"] == 5
    assert stack.server.values()["bytes_sent"] == 8


def test_failing_measurements_are_logged_once_and_never_reach_the_call(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(message: object) -> int:
        raise RuntimeError("bug in records_of")

    target = stack.plain_channel._channel.target().decode()  # type: ignore[attr-defined]
    metrics = Side.create("broken").metrics
    channel = grpc.intercept_channel(
        grpc.insecure_channel(target),
        ClientInterceptor(metrics, size_of=broken, records_of=broken),
    )
    for _ in range(3):
        assert stack.method("unary_unary", "Unary", channel)(b"ok", timeout=5) == b"ok"
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2
    channel.close()


def test_watch_connectivity_follows_the_channel() -> None:
    side = Side.create("watcher")
    changes: queue.Queue[bool] = queue.Queue()
    side.metrics.status.set_connected = changes.put  # type: ignore[method-assign,assignment]
    server, port = start_server(ServerInterceptor(side.metrics))
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stop_watching = watch_connectivity(channel, side.metrics)
    assert changes.get(timeout=10) is True
    server.stop(None)
    assert changes.get(timeout=10) is False
    stop_watching()
    channel.close()
