"""The request chain as plain objects: the real gateway, a fake Collector, no sockets."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gateway_fixtures import attributes_of, counter_request
from middle import FakeForwarder, middle
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from gateway.auth import Credentials
from gateway.chain import BodyPace, BytesBody, Decoding
from gateway.errors import CollectorUnavailable, GatewayError, TenantMismatch
from gateway.grpc_server import MetricsExportHandler
from gateway.http_app import create_app
from gateway.inflight import Lease
from gateway.peers import PeerCounts
from gateway.tenants import Tenant
from gateway.work import Work


class RecordedBody:
    """A body that says when it was read, and what the lease held before."""

    def __init__(self, data: bytes, hint: int = 0) -> None:
        self.data = data
        self.hint = hint
        self.read_with: int | None = None

    @property
    def size_hint(self) -> int:
        return self.hint

    async def read(
        self, lease: Lease, limit: int, pace: BodyPace, work: Work, max_gzip_members: int
    ) -> bytes:
        self.read_with = lease.bytes
        lease.grow(len(self.data))
        return self.data


async def _decode(decoding: Decoding, body: bytes) -> ExportMetricsServiceRequest:
    return ExportMetricsServiceRequest.FromString(body)


def test_an_accepted_export_is_stamped_forwarded_and_counted(tmp_path: Path) -> None:
    gw = middle(tmp_path)
    body = counter_request(value=42, resource_attributes={"service.name": "s"}).SerializeToString()

    outcome = asyncio.run(gw.export(body, gw.keys["acme"]))

    assert (outcome.tenant_id, outcome.reason) == ("acme", "accepted")
    (forwarded,) = gw.forwarder.received
    point = forwarded.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0]
    assert (point.as_int, attributes_of(point.attributes)) == (42, {"tenant_id": "acme"})
    assert gw.sample("gateway_requests_total", tenant_id="acme", outcome="accepted") == 1
    assert gw.sample("gateway_data_points_total", tenant_id="acme", outcome="forwarded") == 1
    assert (gw.gateway.in_flight.requests, gw.gateway.in_flight.bytes) == (0, 0)


def test_a_refusal_before_authentication_takes_nothing_and_reads_nothing(tmp_path: Path) -> None:
    gw = middle(tmp_path)
    body = RecordedBody(counter_request().SerializeToString())

    outcome = asyncio.run(
        gw.gateway.chain.export("http", Credentials("Bearer nope"), body, _decode)
    )

    assert outcome.reason == "unauthenticated"
    assert outcome.tenant_id == "unknown"
    assert body.read_with is None
    assert gw.gateway.in_flight.peak_bytes == 0
    assert gw.sample("gateway_auth_failures_total", transport="http", reason="unknown") == 1
    assert gw.sample("gateway_rejections_total", tenant_id="unknown") == 1


def test_the_in_flight_bound_is_taken_before_the_body_is_read(tmp_path: Path) -> None:
    gw = middle(tmp_path, max_in_flight_requests=1)
    body = RecordedBody(counter_request().SerializeToString(), hint=100)
    credentials = Credentials(f"Bearer {gw.keys['acme']}")

    async def scenario() -> None:
        outcome = await gw.gateway.chain.export("http", credentials, body, _decode)
        assert outcome.error is None
        assert body.read_with == 100  # the declared size was held before reading began
        # Full: the next request is refused before its body is touched.
        gw.gateway.in_flight.enter()
        refused = RecordedBody(b"")
        outcome = await gw.gateway.chain.export("http", credentials, refused, _decode)
        assert outcome.reason == "overloaded"
        assert refused.read_with is None

    asyncio.run(scenario())


def test_the_transport_vets_after_authentication_and_before_anything_is_taken(
    tmp_path: Path,
) -> None:
    gw = middle(tmp_path)
    body = RecordedBody(b"")
    seen: list[str] = []

    def vet(tenant: Tenant) -> None:
        seen.append(tenant.id)
        raise TenantMismatch("not yours")

    outcome = asyncio.run(
        gw.gateway.chain.export(
            "legacy", Credentials(f"Bearer {gw.keys['acme']}"), body, _decode, vet=vet
        )
    )

    assert seen == ["acme"]
    assert outcome.reason == "tenant_mismatch"
    assert body.read_with is None
    assert gw.sample("gateway_requests_total", transport="legacy", outcome="tenant_mismatch") == 1


def test_a_body_is_read_within_the_tenants_limit_and_a_transports_own_cap(tmp_path: Path) -> None:
    gw = middle(tmp_path, max_request_bytes=1000)
    credentials = Credentials(f"Bearer {gw.keys['acme']}")
    chain = gw.gateway.chain

    async def scenario() -> None:
        too_big = await chain.export("grpc", credentials, BytesBody(b"x" * 1001), _decode)
        assert too_big.reason == "request_too_large"
        assert "1000 bytes" in str(too_big.error)
        capped = await chain.export(
            "legacy", credentials, BytesBody(b"x" * 101), _decode, max_body_bytes=100
        )
        assert "limit of 100 bytes" in str(capped.error)

    asyncio.run(scenario())


def test_an_admin_key_authenticates_but_sends_no_data(tmp_path: Path) -> None:
    key = "an-admin-key"
    gw = middle(tmp_path, admin_key_sha256=hashlib.sha256(key.encode()).hexdigest())
    outcome = asyncio.run(gw.export(counter_request().SerializeToString(), key))
    assert outcome.reason == "unauthenticated"
    assert "admin key cannot send data" in str(outcome.error)
    assert gw.sample("gateway_auth_failures_total", reason="admin_key") == 1
    assert gw.forwarder.received == []


def test_the_fleet_hears_of_an_agent_even_when_the_collector_cannot_take_its_data(
    tmp_path: Path,
) -> None:
    gw = middle(tmp_path)
    gw.forwarder.error = CollectorUnavailable("the metrics backend is unavailable")
    body = counter_request(
        resource_attributes={
            "service.name": "billing",
            "service.instance.id": "b-1",
            "agent.type": "connector",
            "otel_agents.state": "stopped",
        }
    ).SerializeToString()

    outcome = asyncio.run(gw.export(body, gw.keys["acme"]))

    assert outcome.reason == "collector_unavailable"
    (row,) = gw.gateway.fleet.sightings()
    assert (row.tenant_id, row.instance, row.state) == ("acme", "b-1", "stopped")
    assert gw.sample("gateway_data_points_total", tenant_id="acme", outcome="failed") == 1


def test_the_fleet_removes_its_attribute_before_the_request_is_forwarded(tmp_path: Path) -> None:
    gw = middle(tmp_path)
    body = counter_request(
        resource_attributes={"service.name": "billing", "otel_agents.state": "stopped"}
    ).SerializeToString()

    asyncio.run(gw.export(body, gw.keys["acme"]))

    (forwarded,) = gw.forwarder.received
    assert attributes_of(forwarded.resource_metrics[0].resource.attributes) == {
        "service.name": "billing",
        "tenant_id": "acme",
    }


def test_a_bug_is_an_internal_refusal_logged_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gw = middle(tmp_path)

    def broken(tenant: Tenant, body: bytes) -> ExportMetricsServiceRequest:
        raise RuntimeError("a bug")

    with caplog.at_level(logging.ERROR, logger="gateway.chain"):
        outcome = asyncio.run(
            gw.gateway.chain.export(
                "grpc", Credentials(f"Bearer {gw.keys['acme']}"), BytesBody(b""), broken
            )
        )
    assert outcome.reason == "internal"
    assert "a bug" in caplog.text
    assert gw.sample("gateway_requests_total", tenant_id="acme", outcome="internal") == 1
    assert (gw.gateway.in_flight.requests, gw.gateway.in_flight.bytes) == (0, 0)


async def _no_messages() -> AsyncIterator[bytes]:
    return
    yield b""


class _Recorded(Exception):
    """What a transport adapter handed to the chain."""


def test_every_transport_runs_the_one_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The adapters only gather credentials and a body: the chain does the rest."""
    gw = middle(tmp_path)
    calls: list[str] = []

    async def export(transport: str, *args: object, **options: object) -> None:
        calls.append(transport)
        raise _Recorded

    monkeypatch.setattr(gw.gateway.chain, "export", export)
    app = create_app(gw.gateway)

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: object) -> None:
        del message

    async def scenario() -> None:
        for path in ("/v1/metrics", "/api/metrics/agent/acme"):
            scope = {"type": "http", "method": "POST", "path": path, "headers": []}
            with pytest.raises(_Recorded):
                await app(scope, receive, send)

        class Context:
            def invocation_metadata(self) -> tuple[()]:
                return ()

            def peer(self) -> str:
                return "ipv4:127.0.0.1:1"

        handler = MetricsExportHandler(gw.gateway.chain, PeerCounts(0, "calls", "setting"))
        with pytest.raises(_Recorded):
            await handler.export(_no_messages(), Context())  # type: ignore[arg-type]

    asyncio.run(scenario())
    assert calls == ["http", "legacy", "grpc"]


def test_a_fake_forwarders_refusal_reaches_the_outcome(tmp_path: Path) -> None:
    gw = middle(tmp_path)
    gw.forwarder.error = GatewayError("the metrics backend failed (UNKNOWN)")
    outcome = asyncio.run(gw.export(counter_request().SerializeToString(), gw.keys["acme"]))
    assert outcome.reason == "internal"
    assert isinstance(gw.forwarder, FakeForwarder)
