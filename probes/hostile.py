"""Attacks beyond bench/isolation_attacks.py, run with bench_isolation's machinery.

Run: PYTHONPATH=$PWD .venv/bin/python probes/hostile.py [word ...]
Each phase restarts the Collector and gateway, starts the attack, then B exports
(10/s, 21 points, gRPC) for 5 s. Prints B's acceptance and p99, B's series in the
Collector, and the RSS / CPU seconds of the gateway and the Collector after the phase.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    ExponentialHistogram,
    ExponentialHistogramDataPoint,
    Histogram,
    HistogramDataPoint,
    Metric,
    ResourceMetrics,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from bench import bench_isolation as bench
from bench import isolation_attacks as attacks
from gateway import tenants
from stack.local import LocalStack, Process, collector_binary

CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
RESOURCE = {"service.name": "a-probe", "service.instance.id": "a-1"}


def _one(metrics: list[Metric]) -> bytes:
    return attacks._request(RESOURCE, metrics).SerializeToString()


async def histogram_buckets(target: attacks.Target, stop: asyncio.Event) -> str:
    """Histograms of 20,000 bounds, 10 new series per request, 4 requests/s."""
    bounds = [float(i) for i in range(20_000)]
    counts = [0] * 20_000 + [1]

    def body(index: int) -> bytes:
        points = [
            HistogramDataPoint(
                count=1,
                sum=1.0,
                explicit_bounds=bounds,
                bucket_counts=counts,
                start_time_unix_nano=time.time_ns() - 10**9,
                time_unix_nano=time.time_ns(),
                attributes=attacks.kvs({"n": str(index * 10 + p)}),
            )
            for p in range(10)
        ]
        histogram = Histogram(data_points=points, aggregation_temporality=CUMULATIVE)
        return _one([Metric(name="a.wide", unit="s", histogram=histogram)])

    return await attacks._grpc_loop(target, stop, body, every=0.25)


async def exponential_offsets(target: attacks.Target, stop: asyncio.Event) -> str:
    """Cumulative exponential histograms at the extreme offsets and scales, 4/s."""

    def body(index: int) -> bytes:
        points = []
        for scale, offset in (
            (20, 2**31 - 2049),
            (20, -(2**31)),
            (-4, 2**31 - 2049),
            (-4, -(2**31)),
        ):
            buckets = ExponentialHistogramDataPoint.Buckets(offset=offset, bucket_counts=[1] * 2048)
            points.append(
                ExponentialHistogramDataPoint(
                    count=4096,
                    sum=1.0,
                    scale=scale,
                    positive=buckets,
                    negative=buckets,
                    start_time_unix_nano=time.time_ns() - 10**9,
                    time_unix_nano=time.time_ns(),
                    attributes=attacks.kvs({"s": f"{scale}/{offset}"}),
                )
            )
        histogram = ExponentialHistogram(data_points=points, aggregation_temporality=CUMULATIVE)
        return _one([Metric(name="a.exp", unit="s", exponential_histogram=histogram)])

    return await attacks._grpc_loop(target, stop, body, every=0.25)


async def grpc_gzip_bomb(target: attacks.Target, stop: asyncio.Event) -> str:
    """gRPC messages sent with grpc-encoding gzip: 60 KB inflating to 60 MB."""
    filler = KeyValue(key="pad", value=AnyValue(string_value="\0" * 60_000_000))
    request = ExportMetricsServiceRequest(
        resource_metrics=[ResourceMetrics(resource=Resource(attributes=[filler]))]
    )
    raw = request.SerializeToString()
    outcomes: collections.Counter[str] = collections.Counter()
    metadata = (("authorization", f"Bearer {target.key_a}"),)
    options = [("grpc.max_send_message_length", 128 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(
        target.grpc, options=options, compression=grpc.Compression.Gzip
    ) as channel:
        export = channel.unary_unary(attacks.EXPORT, None, None)
        while not stop.is_set():
            began = time.monotonic()
            try:
                await export(raw, metadata=metadata, timeout=10)
                outcomes["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                outcomes[f"{exc.code().name}: {exc.details()[:60]}"] += 1
            outcomes_time.append(time.monotonic() - began)
    return attacks._tally(outcomes, 0) + " (gRPC gzip)"


outcomes_time: list[float] = []


async def array_value(target: attacks.Target, stop: asyncio.Event) -> str:
    """One point whose attribute is an array of 1,000,000 empty values, 4/s."""
    big = AnyValue(array_value=ArrayValue(values=[AnyValue()] * 1_000_000))

    def body(index: int) -> bytes:
        metric = attacks._gauge("a.array", 1.0)
        metric.gauge.data_points[0].attributes.append(KeyValue(key="arr", value=big))
        return _one([metric])

    return await attacks._grpc_loop(target, stop, body, every=0.25)


async def nested_value(target: attacks.Target, stop: asyncio.Event) -> str:
    """A point attribute: an array of 5,000 values each nested 40 arrays deep (80
    message levels; upb stops at 100), 4/s."""
    value = AnyValue(string_value="x")
    for _ in range(40):
        value = AnyValue(array_value=ArrayValue(values=[value]))
    wide = AnyValue(array_value=ArrayValue(values=[value] * 5_000))

    def body(index: int) -> bytes:
        metric = attacks._gauge("a.nested", 1.0)
        metric.gauge.data_points[0].attributes.append(KeyValue(key="deep", value=wide))
        return _one([metric])

    return await attacks._grpc_loop(target, stop, body, every=0.25)


async def instance_churn(target: attacks.Target, stop: asyncio.Event) -> str:
    """Connector resources with a new service.instance.id in every request, 20/s."""

    def body(index: int) -> bytes:
        resource = {
            "service.name": "a-churn",
            "service.instance.id": f"a-{index}",
            "agent.type": "connector",
        }
        return attacks._request(resource, [attacks._gauge("a.churn", 1.0)]).SerializeToString()

    return await attacks._grpc_loop(target, stop, body, every=0.05)


async def pipelined(target: attacks.Target, stop: asyncio.Event) -> str:
    """20 connections each writing 300 pipelined small requests at once, never reading."""
    host, _, port = target.http_url.removeprefix("http://").partition(":")
    body = _one([attacks._gauge("a.pipe", 1.0)])
    one = (
        b"POST /v1/metrics HTTP/1.1\r\nHost: g\r\n"
        + f"Authorization: Bearer {target.key_a}\r\n".encode()
        + f"Content-Type: application/x-protobuf\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    writers = []
    for _ in range(20):
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(one * 300)
        writers.append(writer)
    await stop.wait()
    for writer in writers:
        writer.close()
    return "20 x 300 pipelined, never read (HTTP)"


async def keyed_header_only(target: attacks.Target, stop: asyncio.Event) -> str:
    """200 Export calls with A's key that send their headers and never their message,
    over 4 connections from B's own address (127.0.0.1: a shared NAT or node)."""
    outcomes: collections.Counter[str] = collections.Counter()
    started = time.monotonic()
    metadata = (("authorization", f"Bearer {target.key_a}"),)
    channels = [
        grpc.aio.insecure_channel(target.grpc, options=[("probe.connection", i)]) for i in range(4)
    ]

    async def never():  # type: ignore[no-untyped-def]
        await stop.wait()
        return
        yield b""

    async def one(channel: grpc.aio.Channel) -> None:
        call = channel.stream_unary(attacks.EXPORT, None, None)(
            never(), metadata=metadata, timeout=600
        )
        try:
            await call
            outcomes["OK"] += 1
        except grpc.aio.AioRpcError as exc:
            ended = time.monotonic() - started
            outcomes[f"{exc.code().name} after {ended:.0f} s"] += 1
        except asyncio.CancelledError:
            outcomes["held until the end"] += 1
            raise

    tasks = [asyncio.create_task(one(channels[i % 4])) for i in range(200)]
    await stop.wait()
    await asyncio.sleep(0.2)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close(grace=None)
    return attacks._tally(outcomes, started) + " (gRPC, A's key)"


async def stranger_bad_keys(target: attacks.Target, stop: asyncio.Event) -> str:
    """A caller without a valid key, from B's address (127.0.0.1: a shared NAT or node):
    one gRPC Export with a made-up key every 0.1 s."""
    outcomes: collections.Counter[str] = collections.Counter()
    metadata = (("authorization", "Bearer not-a-key"),)
    async with grpc.aio.insecure_channel(target.grpc) as channel:
        export = channel.unary_unary(attacks.EXPORT, None, None)
        while not stop.is_set():
            try:
                await export(b"", metadata=metadata, timeout=5)
                outcomes["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                outcomes[exc.code().name] += 1
            await attacks._wait(stop, 0.1)
    return attacks._tally(outcomes, 0) + " (gRPC, no valid key)"


async def pipelined_stranger(target: attacks.Target, stop: asyncio.Event) -> str:
    """As `pipelined`, without a key (from another address than B's)."""
    host, _, port = target.http_url.removeprefix("http://").partition(":")
    one = b"POST /v1/metrics HTTP/1.1\r\nHost: g\r\nContent-Length: 0\r\n\r\n"
    writers = []
    for _ in range(20):
        _, writer = await asyncio.open_connection(host, int(port), local_addr=("127.0.0.9", 0))
        writer.write(one * 300)
        writers.append(writer)
    await stop.wait()
    for writer in writers:
        writer.close()
    return "20 x 300 pipelined, no key, never read (HTTP)"


async def _tiny_chunks(target: attacks.Target, stop: asyncio.Event, key: str | None) -> str:
    """POST bodies of 500,000 one-byte chunks (3.5 MB on the wire), one after the other
    on fresh connections, from 127.0.0.9."""
    host, _, port = target.http_url.removeprefix("http://").partition(":")
    auth = f"Authorization: Bearer {key}\r\n".encode() if key else b""
    head = (
        b"POST /v1/metrics HTTP/1.1\r\nHost: g\r\n"
        + auth
        + b"Content-Type: application/x-protobuf\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    data = head + b"1\r\nx\r\n" * 500_000 + b"0\r\n\r\n"
    outcomes: collections.Counter[str] = collections.Counter()
    took: list[float] = []
    while not stop.is_set():
        began = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection(
                host, int(port), local_addr=("127.0.0.9", 0)
            )
            writer.write(data)
            line = await asyncio.wait_for(reader.readline(), 30)
            outcomes[line.split(b" ")[1].decode() if line.count(b" ") >= 2 else "closed"] += 1
            writer.close()
        except (OSError, TimeoutError) as exc:
            outcomes[type(exc).__name__] += 1
        took.append(time.monotonic() - began)
    median = sorted(took)[len(took) // 2] if took else 0
    return attacks._tally(outcomes, 0) + f"; median {median:.2f} s each (HTTP)"


async def tiny_chunks(target: attacks.Target, stop: asyncio.Event) -> str:
    """500,000 one-byte chunks a body with A's key."""
    return await _tiny_chunks(target, stop, target.key_a)


async def tiny_chunks_stranger(target: attacks.Target, stop: asyncio.Event) -> str:
    """500,000 one-byte chunks a body without a key."""
    return await _tiny_chunks(target, stop, None)


async def rapid_reset(target: attacks.Target, stop: asyncio.Event) -> str:
    """HTTP/2 rapid reset on the gRPC port without a key, from 127.0.0.9: Export streams
    opened (headers only) and reset at once, in batches of 100, on 4 connections."""
    import h2.config
    import h2.connection
    import h2.errors

    host, _, port = target.grpc.partition(":")
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", attacks.EXPORT),
        (":authority", "gateway"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    sent = 0
    closed = 0

    async def one() -> None:
        nonlocal sent, closed
        reader, writer = await asyncio.open_connection(host, int(port), local_addr=("127.0.0.9", 0))
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        writer.write(conn.data_to_send())

        async def drain() -> None:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                try:
                    conn.receive_data(data)
                except Exception:
                    return

        draining = asyncio.create_task(drain())
        try:
            while not stop.is_set():
                for _ in range(100):
                    stream = conn.get_next_available_stream_id()
                    conn.send_headers(stream, headers)
                    conn.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
                    sent += 1
                writer.write(conn.data_to_send())
                await writer.drain()
                await asyncio.sleep(0)
        except (OSError, Exception):
            closed += 1
        finally:
            draining.cancel()
            writer.close()

    await asyncio.gather(*(one() for _ in range(4)))
    return f"{sent} streams opened and reset, {closed} connections ended by the server"


async def fresh_401(target: attacks.Target, stop: asyncio.Event) -> str:
    """A small POST without a key on a fresh connection, one after the other, from
    127.0.0.9 (the baseline of tiny_chunks_stranger)."""
    host, _, port = target.http_url.removeprefix("http://").partition(":")
    data = b"POST /v1/metrics HTTP/1.1\r\nHost: g\r\nContent-Length: 10\r\n\r\n0123456789"
    outcomes: collections.Counter[str] = collections.Counter()
    while not stop.is_set():
        reader, writer = await asyncio.open_connection(host, int(port), local_addr=("127.0.0.9", 0))
        writer.write(data)
        line = await asyncio.wait_for(reader.readline(), 30)
        outcomes[line.split(b" ")[1].decode() if line.count(b" ") >= 2 else "closed"] += 1
        writer.close()
    return attacks._tally(outcomes, 0) + " (HTTP)"


async def stranger_gzip_bomb(target: attacks.Target, stop: asyncio.Event) -> str:
    """grpc_gzip_bomb without a key, with 64 KB of metadata (run with
    PROBE_GATEWAY_ENV='{"GATEWAY_AUTH_FAILURE_LIMIT": "0"}': B shares the address)."""
    filler = KeyValue(key="pad", value=AnyValue(string_value="\0" * 60_000_000))
    request = ExportMetricsServiceRequest(
        resource_metrics=[ResourceMetrics(resource=Resource(attributes=[filler]))]
    )
    raw = request.SerializeToString()
    outcomes: collections.Counter[str] = collections.Counter()
    metadata = tuple((f"x-pad-{i}", "v" * 1000) for i in range(64))
    options = [("grpc.max_send_message_length", 128 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(
        target.grpc,
        options=options,
        compression=grpc.Compression.Gzip,
    ) as channel:
        export = channel.unary_unary(attacks.EXPORT, None, None)
        while not stop.is_set():
            try:
                await export(raw, metadata=metadata, timeout=10)
                outcomes["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                outcomes[f"{exc.code().name}: {(exc.details() or '')[:50]}"] += 1
    return attacks._tally(outcomes, 0) + " (gRPC gzip, no key)"


PHASES = {
    "quiet": None,
    "histogram_buckets": histogram_buckets,
    "exponential_offsets": exponential_offsets,
    "grpc_gzip_bomb": grpc_gzip_bomb,
    "array_value": array_value,
    "nested_value": nested_value,
    "pipelined": pipelined,
    "instance_churn": instance_churn,
    "keyed_header_only": keyed_header_only,
    "stranger_bad_keys": stranger_bad_keys,
    "pipelined_stranger": pipelined_stranger,
    "tiny_chunks": tiny_chunks,
    "tiny_chunks_stranger": tiny_chunks_stranger,
    "rapid_reset": rapid_reset,
    "stranger_gzip_bomb": stranger_gzip_bomb,
}


def cpu_seconds(process: Process) -> float:
    try:
        fields = Path(f"/proc/{process.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / 100


def main(words: list[str]) -> None:
    run_dir = bench.REPO / ".run" / "probe-hostile"
    run_dir.mkdir(parents=True, exist_ok=True)
    table = tenants.TenantTable()
    keys = {}
    for name in ("alpha", "bravo"):
        table, keys[name] = tenants.add_key(table, name)
    tenants.save(run_dir / "tenants.json", table)
    stack = LocalStack(run_dir, tenants_file=run_dir / "tenants.json")
    rows = []
    try:
        collector = stack.start_collector(collector_binary())
        stack.wait_ready(collector, timeout=60)
        gateway = stack.start_gateway(
            {**bench.GATEWAY_ENV, **json.loads(os.environ.get("PROBE_GATEWAY_ENV", "{}"))}
        )
        stack.wait_ready(gateway, timeout=60)
        for name, attack in PHASES.items():
            if words and name != "quiet" and not any(w in name for w in words):
                continue
            bench.reset(stack, collector, gateway)
            cpu_g, cpu_c = cpu_seconds(gateway), cpu_seconds(collector)
            row = {"attack": name, **asyncio.run(bench.phase(stack, keys, attack, 5))}
            row["gateway_rss_mib"] = bench.rss_mib(gateway)
            row["gateway_cpu_s"] = cpu_seconds(gateway) - cpu_g
            row["collector_rss_mib"] = bench.rss_mib(collector)
            row["collector_cpu_s"] = cpu_seconds(collector) - cpu_c
            row["collector_alive"] = collector.popen.poll() is None
            row["gateway_alive"] = gateway.popen.poll() is None
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        stack.stop_all()


if __name__ == "__main__":
    main(sys.argv[1:])
