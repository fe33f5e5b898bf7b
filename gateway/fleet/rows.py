"""The fleet's rows: one agent as the gateway saw it, and what a resource says of it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from gateway.fleet.processes import Process, union
from gateway.fleet.resource import AGENT_TYPE_KEY, LIFECYCLE_KEY, MAX_VALUE_CHARS

PAGED_TYPES = {"connector": "connector", "etl": "agent"}
"""Agent types with per-agent series (and silence alerts), and their metric prefix."""
NOT_LISTED = "check"
"""The agent type of `otel-agents check`'s test point: not an agent."""

OVER_BUDGET_SECONDS = 600.0
"""An agent stays over budget this long after an export last carried an overflow series."""
MAX_OVER_BUDGET_NAMES = 16
"""Metric names remembered per over-budget agent (the oldest go first)."""
MAX_CLASH_SERIES = 20
"""Clashing agents per tenant named on gateway_fleet_agents_clashing (the rest are
counted in one row with service_instance_id="+")."""

RowState = Literal["running", "stopped", "retired"]
Status = Literal["up", "silent", "stopped", "retired"]
STATUSES: tuple[Status, ...] = ("up", "silent", "stopped", "retired")


class FleetLookupError(LookupError):
    """`forget` named an agent that is not in the table."""


class AmbiguousAgent(FleetLookupError):
    """`forget` named a prefix that matches several agents."""


@dataclass
class Sighting:
    """One agent as the gateway last saw it (times are Unix seconds)."""

    tenant_id: str
    agent_type: str
    service: str
    instance: str
    version: str
    first_seen: float
    last_seen: float
    host: str = ""
    state: RowState = "running"
    silence_from: float = 0.0
    """Silence counts from here: the last sighting, or a gateway restart after it."""
    state_since: float = 0.0
    resource: dict[str, str] = field(default_factory=dict)
    """The agent's resource as last seen (string attributes, tenant_id set by the
    gateway): its fleet series go out under it, next to its own series."""
    over_budget: dict[str, float] = field(default_factory=dict)
    """Metric name → when an export last carried its overflow series (Unix seconds)."""
    seen_by: str = ""
    """The gateway process that heard it last (with a shared state store: the one
    that sends its last-seen series)."""
    processes: list[Process] = field(default_factory=list)
    """The processes that sent as it, most recently seen first (gateway.fleet.processes)."""
    clash_seen: float = 0.0
    """When two processes that alternated were last both seen (Unix seconds)."""
    clash_hosts: list[str] = field(default_factory=list)

    @property
    def family(self) -> str | None:
        """The metric prefix of its type (`connector`, `agent`); None for others."""
        return PAGED_TYPES.get(self.agent_type)


@dataclass(frozen=True)
class Agent:
    """What a resource says about the agent that sent it."""

    agent_type: str
    service: str
    instance: str
    version: str
    host: str
    stopped: bool
    resource: Mapping[str, str] = field(default_factory=dict)
    overflowing: tuple[str, ...] = ()
    """Names of the metrics that carry an overflow series in this export."""
    starts: tuple[tuple[str, int], ...] = ()
    """(series, start time) of some of its cumulative series (resource.series_starts)."""


def agent_of(attributes: Mapping[str, str]) -> Agent | None:
    """The agent a resource's string attributes describe; None when it names none."""
    service = attributes.get("service.name", "")[:MAX_VALUE_CHARS]
    instance = attributes.get("service.instance.id", "")[:MAX_VALUE_CHARS]
    if not service and not instance:
        return None
    agent_type = attributes.get(AGENT_TYPE_KEY, "")
    if agent_type == NOT_LISTED:
        return None
    return Agent(
        agent_type=agent_type if agent_type in PAGED_TYPES else "other",
        service=service,
        instance=instance or service,
        version=attributes.get("service.version", "")[:MAX_VALUE_CHARS],
        host=attributes.get("host.name", "")[:MAX_VALUE_CHARS],
        stopped=attributes.get(LIFECYCLE_KEY) == "stopped",
        resource=attributes,
    )


def merged(old: Sighting, new: Sighting) -> Sighting:
    """One row from two processes' copies of it: the description of the latest
    sighting, the earliest first sighting, the latest state change, the processes of
    both and the latest clash. The store applies the same rule (gateway.state_redis),
    so the order of the exchanges does not matter."""
    base, other = (new, old) if new.last_seen >= old.last_seen else (old, new)
    row = replace(base)  # its dicts go along: `merge` puts it in place of both
    row.first_seen = min(old.first_seen, new.first_seen)
    row.silence_from = max(old.silence_from, new.silence_from)
    if other.state_since > base.state_since:
        row.state, row.state_since = other.state, other.state_since
    if old.processes != new.processes:
        row.processes = union(old.processes, new.processes)
    if other.clash_seen > base.clash_seen:
        row.clash_seen, row.clash_hosts = other.clash_seen, list(other.clash_hosts)
    return row
