"""The fleet: every agent the gateway hears from, its state, and who can see it.

    requests ──▶ table (rows, clash, over budget) ──▶ series (last-seen, to the Collectors)
                   │  └──▶ store (the fleet-state file, one process)
                   └──▶ api (/api/fleet, /status, static/) ◀── cli (`otel-gateway agents`)

`resource` keeps the part of an agent's resource the fleet needs, bounded per agent.
Replicas share the table through gateway.state_redis instead of the file.
"""

from gateway.fleet.rows import (
    STATUSES,
    Agent,
    AmbiguousAgent,
    FleetLookupError,
    Sighting,
    merged,
)
from gateway.fleet.table import FleetTracker, create_fleet

__all__ = [
    "STATUSES",
    "Agent",
    "AmbiguousAgent",
    "FleetLookupError",
    "FleetTracker",
    "Sighting",
    "create_fleet",
    "merged",
]
