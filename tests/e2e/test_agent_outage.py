"""A gateway outage while an agent keeps counting loses nothing and never blocks the host."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import pytest

from otel_agents import connector_metrics, setup_metrics
from scripts.localstack import LocalStack, Ports

pytestmark = pytest.mark.e2e

OUTAGE_SECONDS = float(os.environ.get("E2E_OUTAGE_SECONDS", "120"))


class CountingHost:
    """A host application: counts a batch every few milliseconds on its own thread,
    keeping the true totals and the slowest counting call it made."""

    def __init__(self, record: object) -> None:
        self._record = record
        self.rows = self.nbytes = self.calls = 0
        self.slowest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            rows = 1 + self.calls % 97
            started = time.perf_counter()
            self._record(rows, rows * 64)  # type: ignore[operator]
            self.slowest = max(self.slowest, time.perf_counter() - started)
            self.calls += 1
            self.rows += rows
            self.nbytes += rows * 64

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def test_totals_survive_a_two_minute_gateway_outage(
    stack: LocalStack, tenant_keys: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    tenants_file, keys = tenant_keys
    # A gateway of its own, so stopping it leaves the other tests' gateway alone.
    local = LocalStack(
        tmp_path,
        tenants_file=tenants_file,
        ports=Ports(collector_otlp=stack.ports.collector_otlp),
    )
    gateway = local.start_gateway()
    local.wait_ready(gateway, timeout=30)

    job = f"e2e-outage-{uuid.uuid4().hex[:8]}"
    telemetry = setup_metrics(
        job,
        "connector",
        api_key=keys["acme"],
        environ={
            "OTEL_EXPORTER_OTLP_ENDPOINT": local.gateway_grpc_endpoint,
            "OTEL_METRIC_EXPORT_INTERVAL": "2000",
        },
        set_global=False,
    )
    host = CountingHost(connector_metrics(telemetry).record_batch)
    query = f'sum(connector_bytes_sent_total{{job="{job}"}})'
    try:
        host.start()
        stack.wait_for(query, lambda r: len(r) == 1)  # flowing before the outage

        local.stop(gateway)
        outage_started = time.monotonic()
        calls_before = host.calls
        time.sleep(OUTAGE_SECONDS)  # the outage itself, not synchronisation
        calls_during = host.calls - calls_before

        gateway = local.start_gateway()
        local.wait_ready(gateway, timeout=30)
        outage = time.monotonic() - outage_started
        time.sleep(1.0)  # keep counting after the gateway is back
        host.stop()
        assert telemetry.force_flush(timeout_s=15)

        result = stack.wait_for(
            query, lambda r: len(r) == 1 and float(r[0]["value"][1]) == host.nbytes, timeout=60
        )
        records = stack.query(f'sum(connector_records_sent_total{{job="{job}"}})')
        print(
            f"\noutage {outage:.0f} s: host made {host.calls} counting calls "
            f"({calls_during} during the outage), slowest {host.slowest * 1000:.2f} ms; "
            f"Prometheus bytes={result[0]['value'][1]} (true {host.nbytes}), "
            f"records={records[0]['value'][1]} (true {host.rows})"
        )
        assert float(records[0]["value"][1]) == host.rows
        # The host kept counting at its own pace and never waited on the network:
        # an export attempt against a dead gateway takes seconds.
        assert calls_during > OUTAGE_SECONDS * 50
        assert host.slowest < 0.25
    finally:
        host.stop()
        telemetry.shutdown(timeout_s=5)
        local.stop_all()
