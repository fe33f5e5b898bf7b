"""Every connector metric of the contract, from a real gRPC connector to Prometheus."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pytest

from otel_agents import connector_metrics, setup_metrics
from otel_agents.arrow import ipc_row_count
from otel_agents.grpc_instrumentation import ClientInterceptor, watch_connectivity
from stack.local import LocalStack, http_get
from stack.pki import self_signed_file

pytestmark = pytest.mark.e2e

UPLOAD = "/demo.Upstream/Upload"
STREAM = "/demo.Upstream/UploadStream"
CERT_DAYS = 10


def _ipc(rows: int) -> bytes:
    batch = pa.record_batch({"id": pa.array(range(rows)), "v": pa.array([1.5] * rows)})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return bytes(sink.getvalue())


@pytest.fixture
def upstream() -> Iterator[int]:
    """The platform side of the connector: refuses payloads that start with b'FAIL'."""

    def upload(payload: bytes, context: grpc.ServicerContext) -> bytes:
        if payload.startswith(b"FAIL"):
            context.abort(grpc.StatusCode.UNAVAILABLE, "upstream busy")
        return b"ok"

    def upload_stream(payloads: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        return str(sum(1 for _ in payloads)).encode()

    server = grpc.server(futures.ThreadPoolExecutor(4), options=[("grpc.so_reuseport", 0)])
    handlers = {
        "Upload": grpc.unary_unary_rpc_method_handler(upload),
        "UploadStream": grpc.stream_unary_rpc_method_handler(upload_stream),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("demo.Upstream", handlers),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(None)


def _one(stack: LocalStack, promql: str) -> float:
    result = stack.wait_for(promql, lambda r: len(r) == 1)
    return float(result[0]["value"][1])


def _type_of(stack: LocalStack, name: str) -> str:
    status, body = http_get(f"{stack.prometheus_url}/api/v1/metadata?metric={name}")
    assert status == 200
    import json

    entries: list[dict[str, Any]] = json.loads(body)["data"].get(name, [])
    return entries[0]["type"] if entries else ""


def test_every_connector_metric_arrives_exact_typed_and_under_its_tenant(
    stack: LocalStack,
    tenant_keys: tuple[Path, dict[str, str]],
    upstream: int,
    tmp_path: Path,
) -> None:
    _, keys = tenant_keys
    job = f"e2e-contract-{uuid.uuid4().hex[:8]}"
    telemetry = setup_metrics(
        job,
        "connector",
        api_key=keys["acme"],
        endpoint=stack.gateway_grpc_endpoint,
        service_version="1.2.3",
        set_global=False,
    )
    metrics = connector_metrics(
        telemetry, certificate_path=self_signed_file(tmp_path / "connector.pem", CERT_DAYS)
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{upstream}")
    unwatch = watch_connectivity(channel, metrics)
    counted = grpc.intercept_channel(channel, ClientInterceptor(metrics, records_of=ipc_row_count))
    upload = counted.unary_unary(UPLOAD)
    upload_stream = counted.stream_unary(STREAM)

    sent_bytes = sent_rows = queries = failures = 0
    for rows in (10, 250, 3, 1000):
        payload = _ipc(rows)
        assert upload(payload, timeout=5) == b"ok"
        sent_bytes, sent_rows, queries = sent_bytes + len(payload), sent_rows + rows, queries + 1
    for _ in range(2):
        with pytest.raises(grpc.RpcError):
            upload(b"FAIL", timeout=5)
        sent_bytes, queries, failures = sent_bytes + 4, queries + 1, failures + 1
    stream = [_ipc(rows) for rows in (7, 8, 9)]
    assert upload_stream(iter(stream), timeout=5) == b"3"
    sent_bytes += sum(len(p) for p in stream)
    sent_rows, queries = sent_rows + 24, queries + 1

    assert telemetry.force_flush(timeout_s=10)
    where = f'{{job="{job}", tenant_id="acme"}}'
    try:
        assert _one(stack, f"connector_bytes_sent_total{where}") == sent_bytes
        assert _one(stack, f"connector_records_sent_total{where}") == sent_rows
        assert _one(stack, f"connector_queries_processed_total{where}") == queries
        errors = (
            f'connector_errors_total{{job="{job}", tenant_id="acme", error_type="unavailable"}}'
        )
        assert _one(stack, errors) == failures
        assert _one(stack, f"connector_connected{where}") == 1
        assert 0 < _one(stack, f"connector_uptime_seconds{where}") < 600
        days = _one(stack, f"connector_certificate_expiry_days{where}")
        assert CERT_DAYS - 0.1 < days <= CERT_DAYS
        assert _one(stack, f'target_info{{job="{job}", service_version="1.2.3"}}') == 1
        # Last seen comes from the gateway, sent beside the agent's own series.
        last_seen = _one(
            stack,
            f'connector_last_seen_seconds{{job="{job}", tenant_id="acme", '
            'otel_scope_name="otel_agents.gateway"}',
        )
        assert 0 <= last_seen < 120
        for name in (
            "connector_bytes_sent_total",
            "connector_records_sent_total",
            "connector_queries_processed_total",
            "connector_errors_total",
        ):
            assert _type_of(stack, name) == "counter", name
        for name in (
            "connector_uptime_seconds",
            "connector_connected",
            "connector_certificate_expiry_days",
            "connector_last_seen_seconds",
        ):
            assert _type_of(stack, name) == "gauge", name
        assert stack.query(f'{{job="{job}", tenant_id=~".+", tenant_id!="acme"}}') == []
        # The series budget (docs/agents.md): 9 + 1 per error type, target_info and the
        # gateway's two last-seen series included (they carry the agent's job and
        # instance); this connector saw one error type.
        own = _one(stack, f'count({{job="{job}", tenant_id="acme"}})')
        assert own == 9 + 1
        print(
            f"\nPrometheus saw bytes={sent_bytes} records={sent_rows} queries={queries} "
            f"errors={failures} certificate_days={days:.3f} last_seen={last_seen:.1f}s"
        )
    finally:
        unwatch()
        channel.close()
        telemetry.shutdown(timeout_s=5)
