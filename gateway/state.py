"""Where the state the gateway's processes must agree on lives.

    requests ──▶ fleet table, rate buckets, series counts, auth throttle (in this process)
                      ▲ exchanged every GATEWAY_STATE_SYNC_SECONDS ▼
                 the state store: this process alone (default), or Redis (GATEWAY_STATE_URL)

Requests only ever touch this process's copies; with a shared store, a background
task exchanges them with it in batches (gateway.state_redis), so a request never
waits for the store and an unreachable store costs accuracy, not exports.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from opentelemetry.metrics import Meter, Observation

from gateway import instruments
from gateway.fleet import FleetTracker, Sighting
from gateway.ingest import Ingestor
from gateway.settings import GatewaySettings
from gateway.throttle import FailureThrottle


class StateStore(Protocol):
    """The state shared by the gateway's processes, as the rest of the gateway sees it."""

    @property
    def shared(self) -> bool:
        """True when other processes share this state."""
        ...

    @property
    def up(self) -> bool:
        """The store answered the last exchange (always true in memory)."""
        ...

    def owns(self, row: Sighting) -> bool:
        """Whether this process sends `row`'s last-seen series (one process per agent)."""
        ...

    def document(self) -> dict[str, Any]:
        """What /api/fleet says about the store: shared, up, replicas, partial."""
        ...

    async def run(self) -> None:
        """Exchange with the store until cancelled."""
        ...

    async def close(self) -> None:
        """Send what is left and let go of the store."""
        ...


class MemoryState:
    """All state in this process: one gateway process, no setup (the default)."""

    shared = False
    up = True

    def owns(self, row: Sighting) -> bool:
        """Every agent: no one else sends series."""
        del row
        return True

    def document(self) -> dict[str, Any]:
        """In memory: the view is whole."""
        return {"store": "memory", "up": True, "replicas": 1, "partial": False}

    async def run(self) -> None:
        """Nothing to exchange."""
        await asyncio.Event().wait()

    async def close(self) -> None:
        """Nothing to let go of."""


def create_state(
    settings: GatewaySettings,
    fleet: FleetTracker,
    ingestor: Ingestor,
    throttle: FailureThrottle,
    meter: Meter,
) -> StateStore:
    """The store the settings name (GATEWAY_STATE_URL), wired to the parts it shares."""
    if not settings.state_url:
        instruments.STATE_STORE_UP.observe(meter, lambda _: [Observation(1)])
        instruments.STATE_STORE_REPLICAS.observe(meter, lambda _: [Observation(1)])
        return MemoryState()
    from gateway.state_redis import RedisState  # only a shared deployment needs redis

    return RedisState.create(settings, fleet, ingestor, throttle, meter)
