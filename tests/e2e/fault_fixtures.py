"""For the fault-injection tests: agents that keep counting with their true totals, a
memory sampler, direct probes of the gateway, and the figures each test records (the
TCP proxy that cuts links is stack/tcpproxy.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from stack.local import http_get

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


def gateway_requests(metrics_url: str) -> dict[tuple[str, str, str], float]:
    """gateway_requests_total by (tenant_id, transport, outcome), read from its /metrics
    (`metrics_url`: LocalStack.gateway_metrics_url)."""
    status, body = http_get(f"{metrics_url}/metrics", timeout=5.0)
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
        self.failed_at: list[tuple[float, str]] = []
        """When (Unix time) each request that was not OK was sent, and its status."""
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
                self.failed_at.append((time.time() - (time.monotonic() - started), status))
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
    metrics_url: str, outcome: str, tenants: set[str], since: float, timeout: float = 60.0
) -> float:
    """Seconds until the gateway counts more `outcome` requests of `tenants` than `since`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if outcome_total(gateway_requests(metrics_url), outcome, tenants) > since:
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
