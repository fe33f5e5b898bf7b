"""A gateway outage while an agent keeps counting loses nothing and never blocks the host."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
from fault_fixtures import CountingAgent

from stack.local import LocalStack, Ports

pytestmark = pytest.mark.e2e

OUTAGE_SECONDS = float(os.environ.get("E2E_OUTAGE_SECONDS", "120"))


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
    host = CountingAgent(job, keys["acme"], local.gateway_grpc_endpoint, interval_ms=2000)
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
        assert host.telemetry.force_flush(timeout_s=15)

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
        host.shutdown()
        local.stop_all()
