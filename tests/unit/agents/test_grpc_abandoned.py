"""A call the client abandons is cancelled when collected, with or without the interceptors.

gRPC cancels a call whose last reference goes away (`for r in stub.Stream(req): return`,
a dropped `.future()`), which frees the server's worker. The server here runs in its own
process with 8 workers and streams 20 MiB per call: 12 abandoned calls would leave it
unable to answer if any of them were kept open.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from test_grpc_sync import Side

from otel_agents.grpc_instrumentation import ClientInterceptor, aio_client_interceptors

pytestmark = pytest.mark.slow

SERVER = Path(__file__).with_name("stream_server.py")
SERVICE = "test.Big"
CALLS = 12  # more than the server's 8 workers
CALL_TIMEOUT_S = 30.0  # longer than any wait below: only a cancellation ends a call in time
AIO_CALL_TIMEOUT_S = 3.0


@dataclass
class BigServer:
    """The streaming server's process and its two ports."""

    process: subprocess.Popen[str]
    port: int
    control_port: int

    def stats(self) -> tuple[int, int, int]:
        """(calls started, cancelled by their client, ended) on the server so far."""
        with grpc.insecure_channel(f"127.0.0.1:{self.control_port}") as channel:
            answer = channel.unary_unary(f"/{SERVICE}/Stats")(b"", timeout=5)
        started, cancelled, ended = answer.split(b",")
        return int(started), int(cancelled), int(ended)

    def wait_for(self, check: Callable[[tuple[int, int, int]], bool], what: str) -> None:
        deadline = time.monotonic() + 20
        while not check(seen := self.stats()):
            assert time.monotonic() < deadline, f"server never saw {what}: {seen}"
            time.sleep(0.02)


@pytest.fixture
def server() -> Iterator[BigServer]:
    process = subprocess.Popen(
        [sys.executable, str(SERVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdin is not None
    port, control_port = map(int, process.stdout.readline().split())
    yield BigServer(process, port, control_port)
    process.stdin.close()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def first_of(responses: Any) -> bytes:
    """The host's pattern: take the first response, drop the stream."""
    for response in responses:
        return bytes(response)
    raise AssertionError("no response")


def abandon_sync(channel: grpc.Channel, kind: str, server: BigServer, i: int) -> None:
    if kind == "unary_stream":
        first_of(channel.unary_stream(f"/{SERVICE}/Big")(b"go", timeout=CALL_TIMEOUT_S))
    elif kind == "stream_stream":
        call = channel.stream_stream(f"/{SERVICE}/BigBidi")
        first_of(call(iter([b"go"]), timeout=CALL_TIMEOUT_S))
    else:
        if kind == "unary_unary":
            future = channel.unary_unary(f"/{SERVICE}/Slow").future(b"go", timeout=60)
        else:
            future = channel.stream_unary(f"/{SERVICE}/SlowUpload").future(
                iter([b"go"]), timeout=60
            )
        server.wait_for(lambda seen: seen[0] > i, "the call")
        del future


KINDS = ["unary_unary", "unary_stream", "stream_unary", "stream_stream"]


@pytest.mark.parametrize("instrumented", [True, False], ids=["instrumented", "plain"])
@pytest.mark.parametrize("kind", KINDS)
def test_sync_abandoned_calls_are_cancelled_and_counted(
    server: BigServer, kind: str, instrumented: bool
) -> None:
    side = Side.create("client")
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    if instrumented:
        channel = grpc.intercept_channel(channel, ClientInterceptor(side.metrics))
    for i in range(CALLS):
        abandon_sync(channel, kind, server, i)
    server.wait_for(lambda seen: seen[1] == CALLS, f"{CALLS} cancellations")
    assert channel.unary_unary(f"/{SERVICE}/Echo")(b"next", timeout=5) == b"next"
    if instrumented:
        values = side.values()
        assert values["queries_processed"] == CALLS + 1
        assert values["errors"] == {"unavailable": CALLS}  # CANCELLED
    channel.close()
    side.telemetry.shutdown()


async def abandon_aio(channel: grpc.aio.Channel, kind: str) -> None:
    if kind == "unary_stream":
        call = channel.unary_stream(f"/{SERVICE}/Big")(b"go", timeout=AIO_CALL_TIMEOUT_S)
    else:
        call = channel.stream_stream(f"/{SERVICE}/BigBidi")(
            iter([b"go"]), timeout=AIO_CALL_TIMEOUT_S
        )
    try:
        async for _ in call:
            break
    except grpc.aio.AioRpcError as exc:  # queued behind calls not yet freed
        if exc.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
            raise


async def wait_counted(side: Side, queries: int) -> dict[str, object]:
    deadline = time.monotonic() + 20
    while (values := side.values())["queries_processed"] != queries:
        assert time.monotonic() < deadline, f"counted {values}"
        await asyncio.sleep(0.02)
    return values


# grpc.aio keeps a dropped call referenced for a while, with or without interceptors
# (a plain channel freed and cancelled 5 of 12 dropped streams within seconds), and runs
# a unary-response call in a task of its own to its end. So here the calls end by
# cancellation or by their short deadline: what is checked is that the interceptors
# hold nothing open (every call ends on the server) and count every call once.
@pytest.mark.parametrize("instrumented", [True, False], ids=["instrumented", "plain"])
@pytest.mark.parametrize("kind", ["unary_stream", "stream_stream"])
def test_aio_abandoned_calls_end_and_are_counted(
    server: BigServer, kind: str, instrumented: bool
) -> None:
    side = Side.create("client")

    async def scenario() -> None:
        interceptors = aio_client_interceptors(side.metrics) if instrumented else None
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{server.port}", interceptors=interceptors
        ) as channel:
            for _ in range(CALLS):
                await abandon_aio(channel, kind)
            await asyncio.to_thread(
                server.wait_for,
                lambda seen: seen[0] >= 8 and seen[2] == seen[0],
                "every call it started end",
            )
            echo = channel.unary_unary(f"/{SERVICE}/Echo")
            assert await echo(b"next", timeout=5) == b"next"
            if instrumented:
                values = await wait_counted(side, CALLS + 1)
                # Each dropped call ended cancelled, past its deadline, or (read ahead
                # by grpc.aio) complete: errors are at most one per dropped call.
                errors = values["errors"]
                assert isinstance(errors, dict)
                assert set(errors) <= {"unavailable"}
                assert errors.get("unavailable", 0) <= CALLS

    asyncio.run(scenario())
    side.telemetry.shutdown()
