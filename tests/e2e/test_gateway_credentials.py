"""Credentials against the real gateway process: key rotation and revocation take
effect without a restart, and no header lets one tenant write as another."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from gateway import tenants
from stack.local import REPO, LocalStack, Ports

pytestmark = pytest.mark.e2e

EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
RELOAD_SECONDS = 2.0  # the default of GATEWAY_TENANTS_RELOAD_SECONDS
Keys = tuple[Path, dict[str, str]]


def _cli(tenants_file: Path, *args: str) -> str:
    """Run `otel-gateway tenants ...` as operators do; its stdout."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "tenants", *args, "--file", str(tenants_file)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return result.stdout.strip()


def _kvs(attributes: dict[str, str]) -> list[KeyValue]:
    return [KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in attributes.items()]


def _request(
    name: str, point: dict[str, str], resource: dict[str, str]
) -> ExportMetricsServiceRequest:
    metric = Metric(
        name=name,
        sum=Sum(
            data_points=[NumberDataPoint(as_int=1, attributes=_kvs(point))],
            is_monotonic=True,
            aggregation_temporality=AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE,
        ),
    )
    return ExportMetricsServiceRequest(
        resource_metrics=[
            ResourceMetrics(
                resource=Resource(attributes=_kvs(resource)),
                scope_metrics=[ScopeMetrics(metrics=[metric])],
            )
        ]
    )


def _status(
    channel: grpc.Channel,
    metadata: tuple[tuple[str, str], ...],
    request: ExportMetricsServiceRequest | None = None,
) -> grpc.StatusCode:
    """The status of one Export call (an empty request is authenticated, not forwarded)."""
    export = channel.unary_unary(EXPORT, ExportMetricsServiceRequest.SerializeToString, None)
    try:
        export(request or ExportMetricsServiceRequest(), metadata=metadata, timeout=5)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def _seconds_until(condition: Callable[[], bool], timeout: float = 15.0) -> float:
    """Poll `condition` every 50 ms; the seconds it took to hold."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"still false after {timeout:.0f} s")


def test_rotation_has_no_gap_and_a_revoked_key_is_refused_within_seconds(
    stack: LocalStack, tmp_path: Path
) -> None:
    tenants_file = tmp_path / "tenants.json"
    old_key = _cli(tenants_file, "add", "acme")
    local = LocalStack(
        tmp_path / "run", tenants_file, ports=Ports(collector_otlp=stack.ports.collector_otlp)
    )
    # Polling a not-yet-loaded key every 50 ms would trip the failed-authentication
    # throttle (tested on its own in the unit tests) and block this client.
    gateway = local.start_gateway({"GATEWAY_AUTH_FAILURE_LIMIT": "0"})
    try:
        local.wait_ready(gateway, timeout=30)
        with grpc.insecure_channel(f"127.0.0.1:{local.ports.gateway_grpc}") as channel:
            probe = _request("e2e.revoke.probe", {}, {"service.name": "e2e-revoke"})
            assert _status(channel, _bearer(old_key), probe) == grpc.StatusCode.OK

            new_key = _cli(tenants_file, "rotate", "acme")

            def new_key_works() -> bool:
                # The old key must keep working until the new one does: no gap.
                assert _status(channel, _bearer(old_key)) == grpc.StatusCode.OK
                return _status(channel, _bearer(new_key)) == grpc.StatusCode.OK

            rotated = _seconds_until(new_key_works)

            command_started = time.monotonic()
            _cli(tenants_file, "revoke", "acme", str(tenants.key_id_of(old_key)))
            command_seconds = time.monotonic() - command_started

            def old_key_refused() -> bool:
                assert _status(channel, _bearer(new_key)) == grpc.StatusCode.OK
                return _status(channel, _bearer(old_key)) == grpc.StatusCode.UNAUTHENTICATED

            revoked = _seconds_until(old_key_refused)
    finally:
        local.stop_all()
    print(
        f"\nnew key accepted {rotated:.2f} s after `tenants rotate`; revoked key refused "
        f"{revoked:.2f} s after `tenants revoke` returned ({command_seconds:.2f} s to run it)"
    )
    assert revoked <= RELOAD_SECONDS + 1.0
    assert rotated <= RELOAD_SECONDS + 1.0
    assert "loaded 1 tenant(s)" in gateway.log.read_text()
    assert old_key not in gateway.log.read_text()
    assert new_key not in gateway.log.read_text()


def test_no_header_or_attribute_lets_acme_write_as_globex(
    stack: LocalStack, tenant_keys: Keys
) -> None:
    _, keys = tenant_keys
    name = f"e2e.isolation.{uuid.uuid4().hex[:8]}"
    spoof = {"tenant_id": "globex", "tenant.id": "globex", "Tenant-ID": "globex"}
    headers = (
        *_bearer(keys["acme"]),
        ("x-tenant-id", "globex"),
        ("tenant_id", "globex"),
        ("tenant-id", "globex"),
        ("x-scope-orgid", "globex"),
    )
    duplicate = (*headers, *_bearer(keys["globex"]))
    with grpc.insecure_channel(stack.gateway_grpc_endpoint.removeprefix("http://")) as channel:
        sent = _request(name, {**spoof, "case": "headers"}, {**spoof, "service.name": "e2e-iso"})
        assert _status(channel, headers, sent) == grpc.StatusCode.OK
        twice = _request(name, {**spoof, "case": "duplicate"}, {"service.name": "e2e-iso"})
        duplicate_status = _status(channel, duplicate, twice)
    # Refused where the transport joins repeated values (gateway.auth.authorization_from);
    # where it takes the first value, that is acme's key: acme's data either way.
    assert duplicate_status in (grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED)
    expected = 2 if duplicate_status == grpc.StatusCode.OK else 1
    metric = name.replace(".", "_") + "_total"
    series = stack.wait_for(metric, lambda result: len(result) == expected)
    assert {s["metric"]["tenant_id"] for s in series} == {"acme"}
    assert stack.query(f'{{__name__="{metric}", tenant_id!="acme"}}') == []
