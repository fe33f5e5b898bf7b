"""Memory stays bounded over HTTP: gzip bombs and held requests, many at once, real sockets.

The gateway's HTTP port runs in a thread (uvicorn on a free port) with a fake
Collector that holds every forward until the test lets go, so accepted requests
keep their bodies in memory. Bombs (a few KiB of gzip that inflate past
`max_request_bytes`) and large valid requests arrive together; the in-flight
bound must be taken before any of them is read or decompressed, and must hold
however their decompression interleaves.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from gateway_fixtures import counter_request, make_tenants
from middle import FakeForwarder

from gateway.app import Gateway
from gateway.http_app import create_app
from gateway.server import _HttpServer, http_config
from gateway.settings import GatewaySettings

MIB = 1024 * 1024
LIMIT = 1 * MIB  # max_request_bytes
BOUND = 4 * MIB  # max_in_flight_bytes
BOMBS = 48
HELD = 24
"""Valid requests of ~0.9 MiB each, held at the fake Collector."""


@dataclass
class Served:
    """The running HTTP port, its gateway and how to let the fake Collector answer."""

    url: str
    gateway: Gateway
    release: threading.Event
    key: str


@contextmanager
def served(tmp_path: Path) -> Iterator[Served]:
    """The gateway's HTTP app on a free port, its Collector holding every forward."""
    key = make_tenants(tmp_path / "tenants.json", "acme")["acme"]
    started: list[Served] = []
    ready, stop, release = threading.Event(), threading.Event(), threading.Event()

    async def serve() -> None:
        gate = asyncio.Event()
        settings = GatewaySettings(
            http_host="127.0.0.1",
            http_port=0,
            tenants_file=tmp_path / "tenants.json",
            fleet_state_file=tmp_path / "fleet.json",
            max_request_bytes=LIMIT,
            max_in_flight_bytes=BOUND,
            in_flight_tenant_share=1.0,  # one tenant: the gateway's own bound is tested
            max_http_connections_per_peer=0,  # 72 connections from one address
            max_attribute_value_length=0,  # the held requests' one large value is allowed
            rate_limit_requests_per_second=0,
            forward_linger_seconds=0,
        )
        gateway = Gateway.create(settings, forwarder=FakeForwarder(gate=gate))
        server = _HttpServer(http_config(settings, create_app(gateway)))
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        started.append(Served(f"http://127.0.0.1:{port}", gateway, release, key))
        ready.set()
        while not stop.is_set():
            if release.is_set():
                gate.set()
            await asyncio.sleep(0.01)
        server.should_exit = True
        await task

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(30), "the HTTP server did not start"
    try:
        yield started[0]
    finally:
        release.set()
        stop.set()
        thread.join(30)


def _bomb() -> bytes:
    return gzip.compress(b"\0" * (LIMIT + MIB), compresslevel=9)


def _held() -> bytes:
    request = counter_request(point_attributes={"blob": "a" * (LIMIT - 100 * 1024)})
    return gzip.compress(request.SerializeToString(), compresslevel=9)


@pytest.mark.slow
def test_gzip_bombs_and_held_requests_at_once_stay_within_the_in_flight_bound(
    tmp_path: Path,
) -> None:
    bomb, held = _bomb(), _held()
    assert len(bomb) < 16 * 1024
    assert len(held) < 16 * 1024

    with served(tmp_path) as gw:
        headers = {
            "content-type": "application/x-protobuf",
            "content-encoding": "gzip",
            "authorization": f"Bearer {gw.key}",
        }

        async def flood() -> tuple[Counter[int], Counter[int]]:
            limits = httpx.Limits(max_connections=BOMBS + HELD)
            async with httpx.AsyncClient(base_url=gw.url, limits=limits, timeout=30) as client:

                async def post(body: bytes) -> int:
                    answer = await client.post("/v1/metrics", content=body, headers=headers)
                    return answer.status_code

                # Held requests first: they fill the bound and stay (a stuck Collector).
                holders = [asyncio.create_task(post(held)) for _ in range(HELD)]
                while gw.gateway.in_flight.requests < 3:
                    await asyncio.sleep(0.01)
                bombs = Counter(await asyncio.gather(*(post(bomb) for _ in range(BOMBS))))
                gw.release.set()
                return bombs, Counter(await asyncio.gather(*holders))

        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            baseline, _ = tracemalloc.get_traced_memory()
            bombs, holders = asyncio.run(flood())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()

    # Every bomb was refused: too large once inflated, or no room to inflate it.
    assert set(bombs) <= {413, 503}, bombs
    assert bombs[503] > 0, "the bombs never met the bound: nothing was tested"
    # The held requests that found room were stored once the Collector answered;
    # the others were told to come back later.
    assert set(holders) <= {200, 503}, holders
    assert 1 <= holders[200] <= BOUND // (LIMIT - 100 * 1024)
    in_flight = gw.gateway.in_flight
    assert (in_flight.requests, in_flight.bytes) == (0, 0)
    # The bound counts every byte a body holds, compressed and inflated.
    assert in_flight.peak_bytes <= BOUND + LIMIT
    # What the process allocated meanwhile: the bound plus copies of the held
    # bodies (their parsed and serialized forms), far from what the bombs and the
    # held requests would take unbounded (over 70 MiB of bodies).
    assert peak - baseline < 4 * BOUND + 4 * MIB, f"{(peak - baseline) / MIB:.1f} MiB"
