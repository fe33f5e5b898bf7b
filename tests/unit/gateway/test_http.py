"""The gateway's HTTP endpoints."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from gateway_fixtures import fake_collector, free_port_now
from pydantic import ValidationError

from gateway.app import Gateway
from gateway.http_app import create_app
from gateway.metrics_http import MetricsConfigError, metrics_app, warn_if_open
from gateway.settings import GatewaySettings


def _gateway(tmp_path: Path, collector_port: int, **settings: Any) -> Gateway:
    return Gateway.create(
        GatewaySettings(
            tenants_file=tmp_path / "tenants.json",
            collector_endpoint=f"127.0.0.1:{collector_port}",
            **({"metrics_port": None} | settings),
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
        # Anyone may ask: the answer names no internal address.
        assert not_ready.json()["reason"] == "the Collector does not answer"
        assert str(port) not in not_ready.text

    async def with_collector() -> int:
        async with fake_collector() as (_, live_port):
            gateway = _gateway(tmp_path, live_port)
            ready = await gateway.forwarder.is_ready(timeout_seconds=5)
            await gateway.forwarder.close()
            return 200 if ready else 503

    assert asyncio.run(with_collector()) == 200


TOKEN = "scrape-" + "t" * 32


def test_metrics_on_their_own_port_leave_the_http_port(tmp_path: Path) -> None:
    gateway = _gateway(tmp_path, free_port_now(), metrics_port=0)
    with TestClient(create_app(gateway)) as client:
        assert client.get("/metrics").status_code == 404
        assert client.get("/healthz").status_code == 200
    with TestClient(metrics_app(gateway)) as client:
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert "gateway_requests_in_flight" in metrics.text
        assert client.get("/readyz").status_code == 404  # nothing else there
        assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("metrics_port", [None, 0])
def test_metrics_ask_for_the_scrape_token(tmp_path: Path, metrics_port: int | None) -> None:
    (tmp_path / "metrics-token").write_text(TOKEN + "\n")
    gateway = _gateway(
        tmp_path,
        free_port_now(),
        metrics_port=metrics_port,
        metrics_token_file=tmp_path / "metrics-token",
    )
    app = create_app(gateway) if metrics_port is None else metrics_app(gateway)
    with TestClient(app) as client:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
            refused = client.get("/metrics", headers=headers)
            assert refused.status_code == 401, headers
            assert refused.headers["www-authenticate"] == "Bearer"
            assert "GATEWAY_METRICS_TOKEN_FILE" in refused.text
            assert "gateway_" not in refused.text
        allowed = client.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"})
        assert allowed.status_code == 200
        assert "gateway_requests_in_flight" in allowed.text


@pytest.mark.parametrize("content", [None, "", "short", "with spaces in the token"])
def test_an_unusable_token_file_stops_the_start(tmp_path: Path, content: str | None) -> None:
    token_file = tmp_path / "metrics-token"
    if content is not None:
        token_file.write_text(content)
    gateway = _gateway(tmp_path, free_port_now(), metrics_token_file=token_file)
    with pytest.raises(MetricsConfigError, match="GATEWAY_METRICS_TOKEN_FILE"):
        create_app(gateway)


def test_open_metrics_are_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    open_metrics = _gateway(tmp_path, free_port_now())
    own_port = _gateway(tmp_path, free_port_now(), metrics_port=0)
    with caplog.at_level(logging.WARNING, "gateway.metrics_http"):
        warn_if_open(open_metrics)
        assert "give it a port of its own or set GATEWAY_METRICS_TOKEN_FILE" in caplog.text
        caplog.clear()
        warn_if_open(own_port)
        assert not caplog.text


def test_the_metrics_port_must_be_its_own(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="GATEWAY_METRICS_PORT 4318 is the HTTP or gRPC"):
        GatewaySettings(tenants_file=tmp_path / "tenants.json", metrics_port=4318)


def test_by_default_metrics_are_on_their_own_loopback_port_and_none_moves_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = GatewaySettings(tenants_file=tmp_path / "tenants.json")
    assert (default.metrics_host, default.metrics_port) == ("127.0.0.1", 9464)
    with TestClient(create_app(Gateway.create(default))) as client:
        assert client.get("/metrics").status_code == 404  # not on the agents' port
    monkeypatch.setenv("GATEWAY_METRICS_PORT", "none")
    assert GatewaySettings(tenants_file=tmp_path / "tenants.json").metrics_port is None
