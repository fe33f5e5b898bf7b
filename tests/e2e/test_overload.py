"""Ten times the gateway's capacity: it stays up, bounded, sheds load retryably and recovers.

A real agent keeps counting through the flood with the standard OTLP exporter;
its refused exports are retried (RetryInfo) or carried by the next cumulative
export, so Prometheus ends with its true totals.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import grpc
import pytest
from fault_fixtures import CountingAgent, RssSampler, rss_bytes
from needs import require

from bench.loadgen import LoadgenError, LoadOptions, LoadResult, loadgen_binary, run_loadgen
from stack.local import LocalStack, Ports, http_get

pytestmark = pytest.mark.e2e

FLOOD_SECONDS = float(os.environ.get("E2E_FLOOD_SECONDS", "20"))
# One gateway process's capacity on our 2-core machines (docs/benchmarks.md).
CAPACITY = float(os.environ.get("E2E_GATEWAY_CAPACITY", "1500"))
# docs/reliability.md states this bound for the default in-flight limits.
RSS_BOUND_MB = 400
RETRYABLE = {"RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"}
MIB = 1024 * 1024
EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"


def _accepted_in(endpoint: str, key: str, deadline_s: float) -> float:
    """Seconds until an empty export with `key` is answered OK."""
    started = time.monotonic()
    with grpc.insecure_channel(endpoint.removeprefix("http://")) as channel:
        export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        while time.monotonic() - started < deadline_s:
            try:
                export(b"", metadata=(("authorization", f"Bearer {key}"),), timeout=1)
                return time.monotonic() - started
            except grpc.RpcError:
                time.sleep(0.1)
    raise AssertionError(f"the gateway accepted nothing within {deadline_s} s")


def test_ten_times_capacity_is_shed_retryably_and_no_count_is_lost(
    stack: LocalStack, tenant_keys: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    try:
        binary = loadgen_binary()
    except LoadgenError as exc:
        require("the load generator", exc)
    tenants_file, keys = tenant_keys
    local = LocalStack(
        tmp_path, tenants_file=tenants_file, ports=Ports(collector_otlp=stack.ports.collector_otlp)
    )
    # No tenant rate limit: the flood must reach the gateway's own bound.
    # The flood and the agent share 127.0.0.1: no cap per address either.
    gateway = local.start_gateway(
        {
            "GATEWAY_RATE_LIMIT_REQUESTS_PER_SECOND": "0",
            "GATEWAY_MAX_GRPC_CALLS_PER_PEER": "0",
        }
    )
    local.wait_ready(gateway, timeout=30)
    keys_file = tmp_path / "flood-keys.txt"
    keys_file.write_text(f"globex {keys['globex']}\n")

    job = f"e2e-overload-{uuid.uuid4().hex[:8]}"
    host = CountingAgent(job, keys["acme"], local.gateway_grpc_endpoint, interval_ms=1000)
    query = f'sum(connector_bytes_sent_total{{job="{job}"}})'
    try:
        host.start()
        stack.wait_for(query, lambda r: len(r) == 1)
        rss_before = rss_bytes(gateway.popen.pid) / MIB
        with RssSampler(lambda: gateway.popen.pid, interval=0.25) as rss:
            flood: LoadResult = run_loadgen(
                LoadOptions(
                    target="grpc",
                    addr=f"127.0.0.1:{local.ports.gateway_grpc}",
                    keys_file=keys_file,
                    rate=CAPACITY * 10,
                    concurrency=4000,
                    conns=16,
                    duration_s=FLOOD_SECONDS,
                    warmup_s=0,
                    timeout_s=5,
                ),
                binary=binary,
            )
            recovery = _accepted_in(local.gateway_grpc_endpoint, keys["globex"], 30)
        time.sleep(2.0)  # keep counting after the flood
        host.stop()
        assert host.telemetry.force_flush(timeout_s=15)
        result = stack.wait_for(
            query, lambda r: len(r) == 1 and float(r[0]["value"][1]) == host.nbytes, timeout=60
        )
        records = stack.query(f'sum(connector_records_sent_total{{job="{job}"}})')
        _, health = http_get(f"{local.gateway_http_url}/healthz")
        figures = {
            "flood_seconds": FLOOD_SECONDS,
            "offered_per_s": CAPACITY * 10,
            "sent_per_s": round(flood.requests_per_s),
            "accepted_per_s": round(flood.ok_per_s),
            "statuses": flood.statuses,
            "unsent": flood.unsent,
            "errors": flood.errors[:5],
            "gateway_rss_mb": {"before": round(rss_before), "peak": round(rss.peak / MIB)},
            "recovery_s": round(recovery, 2),
            "bytes": {"prometheus": result[0]["value"][1], "true": host.nbytes},
            "records": {"prometheus": records[0]["value"][1], "true": host.rows},
        }
        print("\noverload:", json.dumps(figures))
        assert gateway.popen.poll() is None, "the gateway died under the flood"
        assert json.loads(health) == {"status": "ok"}
        # Every refusal was one OTLP exporters retry. The gateway refuses with
        # RESOURCE_EXHAUSTED + RetryInfo as fast as it can; what arrives faster
        # than that waits in gRPC's transport and ends at the client's deadline
        # (DEADLINE_EXCEEDED, or CANCELLED when the server gives up the stream).
        assert set(flood.refused) <= RETRYABLE, flood.statuses
        assert flood.refused.get("RESOURCE_EXHAUSTED"), "the flood never reached the bound"
        assert rss.peak / MIB < RSS_BOUND_MB
        assert recovery < 5
        assert float(records[0]["value"][1]) == host.rows
    finally:
        host.shutdown()
        local.stop_all()
