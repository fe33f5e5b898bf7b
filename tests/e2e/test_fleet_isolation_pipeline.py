"""One tenant's bloated agents cannot stop another tenant's last-seen series, against
the real gateway and Collector (docs/gateway.md, "Fleet status").

Tenant acme sends three requests with no points under a 25,000-attribute resource (an
8 MB request each, under the gateway's request limit; together 18 MB of resources once
values are cut to 128 characters, more than the gateway's 16 MiB message limit to the
Collector); globex's connector must keep its `connector_last_seen_seconds` updated on
the Collector's Prometheus endpoint at every fleet interval.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from pathlib import Path

import grpc
import pytest
from gateway_fixtures import connector_resource, resource_only
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as service_grpc
from prometheus_client.parser import text_string_to_metric_families

from stack.local import LocalStack, http_get

pytestmark = pytest.mark.e2e

BLOAT = 25_000
CYCLES = 3
"""Fleet intervals (10 s each by default) in which globex's series must change."""


def _last_seen(stack: LocalStack, instance: str) -> float | None:
    """`connector_last_seen_seconds` of `instance` on the Collector's endpoint, if there."""
    status, body = http_get(f"http://127.0.0.1:{stack.ports.collector_prometheus}/metrics")
    if status != 200:
        return None
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if (
                sample.name == "connector_last_seen_seconds"
                and sample.labels.get("instance") == instance
            ):
                return float(sample.value)
    return None


def test_bloated_agents_of_one_tenant_do_not_stop_anothers_last_seen_series(
    stack: LocalStack, tenant_keys: tuple[Path, dict[str, str]]
) -> None:
    keys = tenant_keys[1]
    run = uuid.uuid4().hex[:8]
    theirs = f"b-{run}"
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports.gateway_grpc}") as channel:
        stub = service_grpc.MetricsServiceStub(channel)  # type: ignore[no-untyped-call]
        stub.Export(
            resource_only(connector_resource("billing", theirs)),
            metadata=(("authorization", f"Bearer {keys['globex']}"),),
            timeout=10,
        )
        for n in range(3):
            bloated = resource_only(connector_resource("bloat", f"bloat-{run}-{n}"), BLOAT)
            assert 7 * 2**20 < bloated.ByteSize() < 8 * 2**20
            # Accepted, or refused by the gateway's resource limits: globex must not care.
            with contextlib.suppress(grpc.RpcError):
                stub.Export(
                    bloated, metadata=(("authorization", f"Bearer {keys['acme']}"),), timeout=30
                )

    values: set[float] = set()
    deadline = time.monotonic() + 15 * (CYCLES + 2)
    while len(values) < CYCLES + 1 and time.monotonic() < deadline:
        value = _last_seen(stack, theirs)
        if value is not None:
            values.add(value)
        time.sleep(0.5)  # polling the endpoint, with a deadline
    # One value per fleet export: globex's series kept being sent after acme's bloat.
    assert len(values) >= CYCLES + 1, sorted(values)
