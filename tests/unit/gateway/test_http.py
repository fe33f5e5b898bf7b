"""The gateway's HTTP endpoints."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi.testclient import TestClient
from gateway_fixtures import fake_collector, free_port_now

from gateway.app import Gateway
from gateway.http_app import create_app
from gateway.settings import GatewaySettings


def _gateway(tmp_path: Path, collector_port: int) -> Gateway:
    return Gateway.create(
        GatewaySettings(
            tenants_file=tmp_path / "tenants.json",
            collector_endpoint=f"127.0.0.1:{collector_port}",
        )
    )


def test_healthz_and_metrics_answer_without_a_collector(tmp_path: Path) -> None:
    with TestClient(create_app(_gateway(tmp_path, free_port_now()))) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        assert "gateway_requests_in_flight" in metrics.text


def test_readyz_follows_the_collector(tmp_path: Path) -> None:
    port = free_port_now()
    with TestClient(create_app(_gateway(tmp_path, port))) as client:
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503
        assert f"127.0.0.1:{port}" in not_ready.json()["reason"]

    async def with_collector() -> int:
        async with fake_collector() as (_, live_port):
            gateway = _gateway(tmp_path, live_port)
            ready = await gateway.forwarder.is_ready(timeout_seconds=5)
            await gateway.forwarder.close()
            return 200 if ready else 503

    assert asyncio.run(with_collector()) == 200
