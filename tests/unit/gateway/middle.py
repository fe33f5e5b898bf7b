"""The gateway without sockets: its chain driven as plain objects, a fake Collector behind.

`middle(tmp_path)` builds the real gateway (settings, tenants file, limits, fleet,
chain) with a `FakeForwarder` in place of the Collector, so a test calls
`gateway.chain.export(...)` the way a transport adapter does and looks at what
would have been forwarded.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway_fixtures import make_tenants
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from gateway.app import Gateway
from gateway.auth import Credentials
from gateway.chain import BytesBody, Decoding, Outcome
from gateway.errors import GatewayError
from gateway.ingest import decode_protobuf
from gateway.settings import GatewaySettings


@dataclass
class FakeForwarder:
    """Records what it is given; refuses with `error` when set; waits for `gate` when set."""

    received: list[ExportMetricsServiceRequest] = field(default_factory=list)
    error: GatewayError | None = None
    gate: asyncio.Event | None = None
    ready: bool = True

    async def forward(self, request: ExportMetricsServiceRequest) -> ExportMetricsServiceResponse:
        """What the Collector would do with `request` (a copy is kept)."""
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        kept = ExportMetricsServiceRequest()
        kept.CopyFrom(request)
        self.received.append(kept)
        return ExportMetricsServiceResponse()

    async def is_ready(self, timeout_seconds: float = 1.0) -> bool:
        """`ready`."""
        return self.ready

    async def close(self) -> None:
        """Nothing to close."""


@dataclass
class Middle:
    """A gateway with a fake Collector, its tenants' keys, and how to send to it."""

    gateway: Gateway
    forwarder: FakeForwarder
    keys: dict[str, str]

    async def export(self, body: bytes, key: str | None, transport: str = "grpc") -> Outcome:
        """One protobuf export through the chain, as the gRPC adapter runs it."""
        authorization = f"Bearer {key}" if key else None
        return await self.gateway.chain.export(
            transport,
            Credentials(authorization, peer="ipv4:10.0.0.1:5000"),
            BytesBody(body),
            _decode,
            protobuf=True,
        )

    def sample(self, name: str, **labels: str) -> float | None:
        """One sample of the gateway's own metrics, or None."""
        return sample(self.gateway.telemetry.registry, name, **labels)


async def _decode(decoding: Decoding, body: bytes) -> ExportMetricsServiceRequest:
    return decode_protobuf(body)


def middle(tmp_path: Path, *tenants: str, **settings: Any) -> Middle:
    """The gateway with tenants (acme and globex by default) and `settings` overrides."""
    keys = make_tenants(tmp_path / "tenants.json", *(tenants or ("acme", "globex")))
    forwarder = FakeForwarder()
    gateway = Gateway.create(
        GatewaySettings(
            tenants_file=tmp_path / "tenants.json",
            fleet_state_file=tmp_path / "fleet-state.json",
            **settings,
        ),
        forwarder=forwarder,
    )
    return Middle(gateway, forwarder, keys)


def sample(registry: object, name: str, **labels: str) -> float | None:
    """One sample of a Prometheus registry (the gateway's own metrics), or None."""
    for family in registry.collect():  # type: ignore[attr-defined]
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None
