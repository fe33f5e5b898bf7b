"""For the fault-injection tests: a TCP proxy that can be cut, agents that keep counting
with their true totals, a memory sampler, direct probes of the gateway, and the
figures each test records."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2_grpc import MetricsServiceStub
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2 as m
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from prometheus_client.parser import text_string_to_metric_families

from otel_agents import AgentTelemetry, connector_metrics, setup_metrics
from scripts.localstack import http_get

T = TypeVar("T")

# -- a TCP proxy that can be cut ---------------------------------------------------------


@dataclass(eq=False)
class _Link:
    """One client connection through the proxy and its upstream connection."""

    client: asyncio.StreamWriter
    flowing: asyncio.Event
    upstream: asyncio.StreamWriter | None = None

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()


class TcpProxy:
    """A loopback TCP proxy to `upstream_port`, on a port of its own, that a test can cut.

    - `refuse()`: every connection is closed and the port refuses new ones (a
      component gone, a host answering with RST);
    - `blackhole()`: connections stay open but nothing is forwarded either way, and
      new ones are accepted and never forwarded (a partition: packets dropped);
    - `restore()`: forwarding again; bytes held during a blackhole are delivered, as
      TCP retransmission would after a partition heals. `restore(strand=True)` leaves
      the connections that lived through the blackhole dead forever (a middlebox that
      lost their state) and forwards only new ones.
    """

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self._upstream = (upstream_host, upstream_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._mode = "forward"
        self.port = 0
        self.connections = 0
        """Connections accepted so far."""

    @property
    def address(self) -> str:
        """host:port to give clients instead of the upstream's."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        """Listen on a free port; forward."""
        self._thread.start()
        self._call(self._listen())
        return self

    def refuse(self) -> None:
        """Close every connection; refuse new ones."""
        self._call(self._refuse())

    def blackhole(self) -> None:
        """Keep connections, forward nothing."""
        self._call(self._set_mode("blackhole"))

    def restore(self, *, strand: bool = False) -> None:
        """Forward again (see the class docstring for `strand`)."""
        self._call(self._restore(strand))

    def close(self) -> None:
        """Close everything and stop the proxy's thread."""
        if self._thread.is_alive():
            self._call(self._shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _refuse(self) -> None:
        self._mode = "refuse"
        if self._server is not None:
            self._server.close()
            self._server = None
        for link in list(self._links):
            link.abort()
            link.flowing.set()  # let its tasks see the closed sockets and end
        self._links.clear()

    async def _shutdown(self) -> None:
        await self._refuse()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _set_mode(self, mode: str) -> None:
        self._mode = mode
        for link in self._links:
            link.flowing.clear()

    async def _restore(self, strand: bool) -> None:
        self._mode = "forward"
        if self._server is None:
            await self._listen()
        for link in self._links:
            if not strand:
                link.flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        link = _Link(writer, asyncio.Event())
        if self._mode == "forward":
            link.flowing.set()
        self._links.add(link)
        try:
            await link.flowing.wait()
            if self._mode == "refuse":
                return
            up_reader, link.upstream = await asyncio.open_connection(*self._upstream)
            pumps = {
                asyncio.ensure_future(self._pump(reader, link.upstream, link)),
                asyncio.ensure_future(self._pump(up_reader, writer, link)),
            }
            _, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
        except OSError:
            pass
        finally:
            self._links.discard(link)
            link.abort()

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: _Link) -> None:
        with contextlib.suppress(OSError):
            while True:
                await link.flowing.wait()  # while cut, bytes wait in the kernel's buffers
                data = await src.read(65536)
                if not data:
                    return
                await link.flowing.wait()
                dst.write(data)
                await dst.drain()


# -- agents that keep counting -------------------------------------------------------------


class CountingAgent:
    """A real `otel_agents` connector in this process: counts a batch every few
    milliseconds on its own thread, exports cumulative totals every `interval_ms`,
    and keeps the true totals to compare with Prometheus, and the slowest counting
    call it made."""

    def __init__(self, job: str, api_key: str, endpoint: str, interval_ms: int = 1000) -> None:
        self.job = job
        self.telemetry: AgentTelemetry = setup_metrics(
            job,
            "connector",
            api_key=api_key,
            environ={
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                "OTEL_METRIC_EXPORT_INTERVAL": str(interval_ms),
            },
            set_global=False,
        )
        self._record = connector_metrics(self.telemetry).record_batch
        self.rows = self.nbytes = self.calls = 0
        self.slowest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            rows = 1 + self.calls % 97
            started = time.perf_counter()
            self._record(rows, rows * 64)
            self.slowest = max(self.slowest, time.perf_counter() - started)
            self.calls += 1
            self.rows += rows
            self.nbytes += rows * 64

    def start(self) -> None:
        """Start counting."""
        self._thread.start()

    def stop(self) -> None:
        """Stop counting; the totals are final."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def flush(self) -> bool:
        """Export the final totals now."""
        return self.telemetry.force_flush(timeout_s=20)

    def shutdown(self) -> None:
        """Stop counting and exporting."""
        self.stop()
        self.telemetry.shutdown(timeout_s=5)


# -- the gateway from outside ----------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """VmRSS of `pid` from /proc, 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class RssSampler:
    """Samples a process's VmRSS every `interval` seconds on a thread; keeps the peak."""

    def __init__(self, pid: Callable[[], int], interval: float = 0.2) -> None:
        self._pid = pid
        self._interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            value = rss_bytes(self._pid())
            if value:
                self.samples.append(value)
            if self._stop.wait(self._interval):
                return

    @property
    def peak(self) -> int:
        """The largest sample (bytes)."""
        return max(self.samples, default=0)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def gateway_requests(http_url: str) -> dict[tuple[str, str, str], float]:
    """gateway_requests_total by (tenant_id, transport, outcome), read from its /metrics."""
    status, body = http_get(f"{http_url}/metrics", timeout=5.0)
    assert status == 200, f"the gateway's /metrics answered {status}"
    counts: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "gateway_requests_total":
                labels = sample.labels
                key = (labels["tenant_id"], labels["transport"], labels["outcome"])
                counts[key] = sample.value
    return counts


def outcome_total(
    counts: dict[tuple[str, str, str], float], outcome: str, tenants: set[str] | None = None
) -> float:
    """Requests with `outcome` (of `tenants`, or all)."""
    return sum(
        value
        for (tenant, _, this_outcome), value in counts.items()
        if this_outcome == outcome and (tenants is None or tenant in tenants)
    )


def probe_request(job: str, value: float) -> ExportMetricsServiceRequest:
    """One gauge point `fault_probe` of resource `job`: forwarded like any data."""
    point = m.NumberDataPoint(as_double=value, time_unix_nano=time.time_ns())
    resource = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value=job))])
    metric = m.Metric(name="fault_probe", gauge=m.Gauge(data_points=[point]))
    return ExportMetricsServiceRequest(
        resource_metrics=[
            m.ResourceMetrics(resource=resource, scope_metrics=[m.ScopeMetrics(metrics=[metric])])
        ]
    )


@dataclass
class Probe:
    """Direct OTLP/gRPC exports to the gateway, as an exporter makes them."""

    grpc_port: int
    api_key: str
    job: str = "fault-probe"
    _channel: grpc.Channel = field(init=False)

    def __post_init__(self) -> None:
        self._channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")

    def export(self, timeout: float = 15.0) -> tuple[grpc.StatusCode, float]:
        """The status of one export and the seconds it took."""
        stub = MetricsServiceStub(self._channel)  # type: ignore[no-untyped-call]
        started = time.monotonic()
        try:
            stub.Export(
                probe_request(self.job, time.time()),
                metadata=(("authorization", f"Bearer {self.api_key}"),),
                timeout=timeout,
            )
        except grpc.RpcError as exc:
            return exc.code(), time.monotonic() - started
        return grpc.StatusCode.OK, time.monotonic() - started

    def seconds_until_accepted(self, timeout: float = 60.0) -> float:
        """Seconds until an export is accepted (probing every 0.1 s)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            code, _ = self.export(timeout=10.0)
            if code == grpc.StatusCode.OK:
                return time.monotonic() - started
            time.sleep(0.1)
        raise AssertionError(f"no export accepted within {timeout:.0f} s")

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()


class Flood:
    """Many exporters at once while a fault lasts: `concurrency` senders on one channel,
    `rate` requests/s in all at most, `points` gauge points per request; the statuses
    they got are counted."""

    def __init__(
        self, grpc_port: int, api_key: str, concurrency: int = 64, rate: float = 200.0
    ) -> None:
        self._target = f"127.0.0.1:{grpc_port}"
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self._concurrency = concurrency
        self._period = concurrency / rate  # each sender's pace
        request = probe_request("fault-flood", 1.0)
        gauge = request.resource_metrics[0].scope_metrics[0].metrics[0].gauge
        template = gauge.data_points[0]
        del gauge.data_points[:]
        for i in range(20):
            point = gauge.data_points.add()
            point.CopyFrom(template)
            point.attributes.add(key="i", value=AnyValue(string_value=str(i)))
        self._body = request
        self.statuses: dict[str, int] = {}
        self.slowest: dict[str, float] = {}
        """The longest answer (seconds) of each status."""
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Future[list[None]] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        async with grpc.aio.insecure_channel(self._target) as channel:
            stub = MetricsServiceStub(channel)  # type: ignore[no-untyped-call]
            self._task = asyncio.gather(*(self._send(stub) for _ in range(self._concurrency)))
            await self._task

    async def _send(self, stub: MetricsServiceStub) -> None:
        while True:
            started = time.monotonic()
            try:
                await stub.Export(self._body, metadata=self._metadata, timeout=10)
                status = "OK"
            except grpc.aio.AioRpcError as exc:
                status = exc.code().name
            seconds = time.monotonic() - started
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.slowest[status] = max(self.slowest.get(status, 0.0), round(seconds, 2))
            await asyncio.sleep(max(0.0, self._period - (time.monotonic() - started)))

    def __enter__(self) -> Flood:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        def cancel() -> None:
            if self._task is not None:
                self._task.cancel()

        self._loop.call_soon_threadsafe(cancel)
        self._thread.join(timeout=20)


def wait_for_outcome_increase(
    http_url: str, outcome: str, tenants: set[str], since: float, timeout: float = 60.0
) -> float:
    """Seconds until the gateway counts more `outcome` requests of `tenants` than `since`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if outcome_total(gateway_requests(http_url), outcome, tenants) > since:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"no {outcome} request of {tenants} within {timeout:.0f} s")


# -- figures ------------------------------------------------------------------------------------


def record_figures(
    name: str, tmp_path_factory: pytest.TempPathFactory, figures: dict[str, Any]
) -> None:
    """Print one test's figures and append them to fault-figures.json under pytest's
    base temporary directory (its path is printed too)."""
    path = tmp_path_factory.getbasetemp() / "fault-figures.json"
    entry = {"test": name, **figures}
    existing: list[dict[str, Any]] = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps([*existing, entry], indent=2))
    print(f"\n[fault figures] {json.dumps(entry)}\n[fault figures] written to {path}")


def pause_seconds() -> float:
    """How long each fault lasts: E2E_FAULT_PAUSE_SECONDS, 20 by default."""
    return float(os.environ.get("E2E_FAULT_PAUSE_SECONDS", "20"))
