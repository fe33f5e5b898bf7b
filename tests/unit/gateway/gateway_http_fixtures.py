"""The gateway's HTTP app in this process, with a fake Collector, for unit tests.

Everything runs on one event loop (httpx's ASGI transport, no server socket), so
the gateway's gRPC channel to the fake Collector lives on the loop it was made on.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from gateway_fixtures import FakeCollector, fake_collector, make_tenants

from gateway.app import Gateway
from gateway.http_app import create_app
from gateway.settings import GatewaySettings

ADMIN_KEY = "admin-key-for-unit-tests-only"
ADMIN_DIGEST = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()


@dataclass
class HttpGateway:
    """A client of the app, the fake Collector behind it, the gateway and tenant keys."""

    client: httpx.AsyncClient
    collector: FakeCollector
    gateway: Gateway
    keys: dict[str, str]

    def auth(self, tenant: str) -> dict[str, str]:
        """The authorization header of `tenant`'s key."""
        return {"authorization": f"Bearer {self.keys[tenant]}"}


@asynccontextmanager
async def http_gateway(tmp_path: Path, **overrides: object) -> AsyncIterator[HttpGateway]:
    """Tenants acme and globex, an admin key, a fake Collector and the HTTP app."""
    keys = make_tenants(tmp_path / "tenants.json", "acme", "globex")
    async with fake_collector() as (collector, port):
        settings = GatewaySettings(
            tenants_file=tmp_path / "tenants.json",
            collector_endpoint=f"127.0.0.1:{port}",
            forward_timeout_seconds=2.0,
            admin_key_sha256=ADMIN_DIGEST,
            **({"metrics_port": None} | overrides),  # type: ignore[arg-type]
        )
        gateway = Gateway.create(settings)
        transport = httpx.ASGITransport(app=create_app(gateway), client=("127.0.0.1", 40000))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                yield HttpGateway(client, collector, gateway, keys)
        finally:
            await gateway.forwarder.close()


def metrics_lines(text: str, prefix: str) -> list[str]:
    """The sample lines of a Prometheus text exposition that start with `prefix`."""
    return [line for line in text.splitlines() if line.startswith(prefix)]
