"""The attacks of bench_isolation: what tenant A (or a stranger) sends while B exports.

Each attack is a coroutine `attack(target, stop) -> str`: it runs until `stop` is
set and returns what A got, in a few words (statuses and how long they took). Each
was seen to hurt other tenants at these sizes (docs/reliability.md, "Hostile
tenants").
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gzip
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True)
class Target:
    """Where the gateway listens and A's key."""

    grpc: str  # host:port
    http_url: str
    key_a: str


Attack = Callable[[Target, asyncio.Event], Coroutine[Any, Any, str]]


def kvs(attributes: dict[str, str]) -> list[KeyValue]:
    """OTLP attributes of string values."""
    return [KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in attributes.items()]


def _request(resource: dict[str, str], metrics: list[Metric]) -> ExportMetricsServiceRequest:
    return ExportMetricsServiceRequest(
        resource_metrics=[
            ResourceMetrics(
                resource=Resource(attributes=kvs(resource)),
                scope_metrics=[ScopeMetrics(metrics=metrics)] if metrics else [],
            )
        ]
    )


def _gauge(name: str, value: float, unit: str = "") -> Metric:
    point = NumberDataPoint(as_double=value, time_unix_nano=time.time_ns())
    return Metric(name=name, unit=unit, gauge=Gauge(data_points=[point]))


def _tally(outcomes: collections.Counter[str], started: float) -> str:
    if not outcomes:
        return f"nothing answered in {time.monotonic() - started:.0f} s"
    return ", ".join(f"{count} x {what}" for what, count in outcomes.most_common())


async def _http_loop(
    target: Target, stop: asyncio.Event, body: bytes, headers: dict[str, str], every: float = 0.0
) -> str:
    """POST `body` to /v1/metrics again and again (one at a time, or one per `every`
    seconds) until `stop`; the statuses and their median time."""
    outcomes: collections.Counter[str] = collections.Counter()
    seconds: list[float] = []
    started = time.monotonic()
    headers = {"authorization": f"Bearer {target.key_a}", "content-type": PROTOBUF, **headers}

    async def one(client: httpx.AsyncClient) -> None:
        began = time.monotonic()
        try:
            answer = await client.post(f"{target.http_url}/v1/metrics", content=body)
            outcomes[str(answer.status_code)] += 1
        except httpx.HTTPError as exc:
            outcomes[type(exc).__name__] += 1
        seconds.append(time.monotonic() - began)

    async with httpx.AsyncClient(headers=headers, timeout=120.0) as client:
        tasks: set[asyncio.Task[None]] = set()
        while not stop.is_set():
            if every:
                task = asyncio.create_task(one(client))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                await _wait(stop, every)
            else:
                await _until_stopped(one(client), stop)
        for task in tasks:
            task.cancel()
    took = f"; median {sorted(seconds)[len(seconds) // 2]:.2f} s each" if seconds else ""
    return f"{_tally(outcomes, started)}{took} (HTTP, {len(body) / 1e6:.2f} MB)"


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _until_stopped(work: Awaitable[None], stop: asyncio.Event) -> None:
    """Run `work`, abandoning it when `stop` is set."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    for pending in (task, stopper):
        pending.cancel()


async def gzip_members(target: Target, stop: asyncio.Event) -> str:
    """An 8 MB body of ~419,000 empty gzip members (an empty export once inflated)."""
    body = gzip.compress(b"", mtime=0) * (8 * 1024 * 1024 // 20)
    return await _http_loop(target, stop, body, {"content-encoding": "gzip"})


async def big_json(target: Target, stop: asyncio.Event) -> str:
    """A 7.5 MB OTLP/JSON body (130,000 gauge points)."""
    point = {"asDouble": 1.0, "timeUnixNano": str(time.time_ns())}
    document = {
        "resourceMetrics": [
            {
                "resource": {"attributes": []},
                "scopeMetrics": [
                    {"metrics": [{"name": "a.big", "gauge": {"dataPoints": [point] * 130_000}}]}
                ],
            }
        ]
    }
    body = json.dumps(document).encode()
    return await _http_loop(target, stop, body, {"content-type": "application/json"})


async def refused_points(target: Target, stop: asyncio.Event) -> str:
    """A small gzip body inflating to 10,000 points that are all refused (each with an
    attribute value over the 256-character limit), at A's allowed rate (20/s)."""
    attributes = kvs({"note": "x" * 300})
    points = [
        NumberDataPoint(as_double=1.0, time_unix_nano=time.time_ns(), attributes=attributes)
        for _ in range(10_000)
    ]
    metric = Metric(name="a.refused", gauge=Gauge(data_points=points))
    raw = _request({"service.name": "a-refused"}, [metric]).SerializeToString()
    body = gzip.compress(raw)
    return await _http_loop(target, stop, body, {"content-encoding": "gzip"}, every=1 / 20)


async def header_only_grpc(target: Target, stop: asyncio.Event) -> str:
    """1,030 Export calls without a credential that send their headers and never their
    message, over 11 connections."""
    outcomes: collections.Counter[str] = collections.Counter()
    started = time.monotonic()
    channels = [
        # A distinct argument: a connection of its own, not a shared subchannel.
        grpc.aio.insecure_channel(target.grpc, options=[("bench.connection", index)])
        for index in range(11)
    ]

    async def never() -> AsyncIterator[bytes]:
        await stop.wait()
        return
        yield b""  # an async generator that yields nothing

    async def one(channel: grpc.aio.Channel) -> None:
        call = channel.stream_unary(EXPORT, None, None)(never(), timeout=600)
        try:
            await call
            outcomes["OK"] += 1
        except grpc.aio.AioRpcError as exc:
            ended = time.monotonic() - started
            outcomes[f"{exc.code().name} ({'at once' if ended < 1 else f'{ended:.0f} s'})"] += 1
        except asyncio.CancelledError:
            outcomes["held until the end"] += 1
            raise

    tasks = [asyncio.create_task(one(channels[i % 11])) for i in range(1030)]
    await stop.wait()
    await asyncio.sleep(0.2)  # calls the server ends as the stop is seen count as ended
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close(grace=None)
    return f"{_tally(outcomes, started)} (gRPC, no credential)"


async def slow_uploads(target: Target, stop: asyncio.Event) -> str:
    """8 HTTP requests announcing 8 MiB and sending one byte."""
    host, _, port = target.http_url.removeprefix("http://").partition(":")
    outcomes: collections.Counter[str] = collections.Counter()
    started = time.monotonic()

    async def one() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /v1/metrics HTTP/1.1\r\nHost: gateway\r\n"
            + f"Authorization: Bearer {target.key_a}\r\n".encode()
            + f"Content-Type: {PROTOBUF}\r\nContent-Length: 8388608\r\n\r\n\n".encode()
        )
        await writer.drain()
        try:
            line = await reader.readline()
            ended = time.monotonic() - started
            status = line.split(b" ")[1].decode() if line.count(b" ") >= 2 else "closed"
            outcomes[f"{status} after {ended:.0f} s"] += 1
        except asyncio.CancelledError:
            outcomes["held until the end"] += 1
            raise
        finally:
            writer.close()

    tasks = [asyncio.create_task(one()) for _ in range(8)]
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return f"{_tally(outcomes, started)} (HTTP)"


async def _grpc_loop(
    target: Target, stop: asyncio.Event, bodies: Callable[[int], bytes], every: float = 0.0
) -> str:
    """Export `bodies(i)` one after the other (or one per `every` seconds) with A's key
    until `stop` or an empty body."""
    outcomes: collections.Counter[str] = collections.Counter()
    started = time.monotonic()
    metadata = (("authorization", f"Bearer {target.key_a}"),)
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(target.grpc, options=options) as channel:
        export = channel.unary_unary(EXPORT, None, None)
        sent = 0
        while not stop.is_set():
            body = bodies(sent)
            if not body:
                await stop.wait()
                break
            sent += 1
            try:
                await export(body, metadata=metadata, timeout=10)
                outcomes["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                outcomes[exc.code().name] += 1
            if every:
                await _wait(stop, every)
    return f"{_tally(outcomes, started)} (gRPC)"


def _big_resource(attributes: int, value_chars: int, extra: dict[str, str]) -> Resource:
    values = {f"attr{index:05d}": "v" * value_chars for index in range(attributes)}
    return Resource(attributes=kvs({**extra, **values}))


async def huge_resource(target: Target, stop: asyncio.Event) -> str:
    """Requests of one point under a 7.2 MB resource of 28,000 attributes."""
    resource = _big_resource(28_000, 240, {"service.name": "a-huge"})
    point = _gauge("a.huge", 1.0)

    def body(index: int) -> bytes:
        instance = Resource(attributes=kvs({"service.instance.id": f"a-{index}"}))
        instance.MergeFrom(resource)
        resource_metrics = ResourceMetrics(
            resource=instance, scope_metrics=[ScopeMetrics(metrics=[point])]
        )
        request = ExportMetricsServiceRequest(resource_metrics=[resource_metrics])
        return request.SerializeToString()

    return await _grpc_loop(target, stop, body)


async def forged_type(target: Target, stop: asyncio.Event) -> str:
    """A gauge named like B's counter, histograms named like the gateway's last-seen
    gauges, every half second."""

    def histogram(name: str) -> Metric:
        point = HistogramDataPoint(count=1, sum=1.0, bucket_counts=[1, 0], explicit_bounds=[1.0])
        point.time_unix_nano = time.time_ns()
        return Metric(name=name, unit="s", histogram=Histogram(data_points=[point]))

    def body(index: int) -> bytes:
        metrics = [
            _gauge("connector.errors_total", 1.0),
            histogram("connector.last_seen"),
            histogram("connector.last_seen.timestamp"),
            histogram("agent.last_seen"),
        ]
        resource = {"service.name": "a-forger", "service.instance.id": "a-1"}
        return _request(resource, metrics).SerializeToString()

    return await _grpc_loop(target, stop, body, every=0.5)


async def bloated_fleet(target: Target, stop: asyncio.Event) -> str:
    """Three requests without points under a 25,000-attribute connector resource."""

    def body(index: int) -> bytes:
        if index >= 3:
            return b""
        resource = _big_resource(
            25_000,
            240,
            {
                "service.name": "a-bloat",
                "service.instance.id": f"a-{index}",
                "agent.type": "connector",
            },
        )
        request = ExportMetricsServiceRequest(resource_metrics=[ResourceMetrics(resource=resource)])
        return request.SerializeToString()

    return await _grpc_loop(target, stop, body)


async def bad_attribute_key(target: Target, stop: asyncio.Event) -> str:
    """Resources with the keys `.`, `-` and a fullwidth one, every half second."""

    def body(index: int) -> bytes:
        resource = {
            "service.name": "a-keys",
            "service.instance.id": "a-1",
            ".": "x",
            "-": "x",
            "\uff54\uff45\uff4e\uff41\uff4e\uff54": "x",  # "tenant" in fullwidth letters
        }
        return _request(resource, [_gauge("a.keys", 1.0)]).SerializeToString()

    return await _grpc_loop(target, stop, body, every=0.5)
