"""Fleet status: when the gateway last heard from each agent, and its version.

Told about every request that reached the Collector (an `AcceptedObserver` of the
ingestor), it keeps one row per agent: tenant, type, service.name,
service.instance.id, service.version, first and last seen. From that table come
the `*_last_seen_*` gauges on the gateway's /metrics and the /api/fleet listing.

"Last seen" has to come from here, not from the agents' own series: the
Collector keeps exposing a dead agent's last values for minutes. The table is
saved to a state file so that an agent which died before a gateway restart still
shows as silent after it.

Bounds: an agent unseen for `forget_after` is forgotten, and so is a silent one
whose service has an instance first seen after it (a restarted agent gets a new
service.instance.id: the old one is replaced, not dead); at most
`max_per_tenant` rows per tenant, the least recently seen go first.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from gateway.settings import GatewaySettings
from gateway.tenants import Tenant

logger = logging.getLogger(__name__)

STATE_VERSION = 1
MAX_VALUE_CHARS = 128
"""Longer service names, instance ids and versions are cut: they become label values."""


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

    @property
    def family(self) -> str:
        """The metric prefix of its type: `connector`, else `agent` (etl and others)."""
        return "connector" if self.agent_type == "connector" else "agent"


def _identity(attributes: dict[str, str]) -> tuple[str, str, str, str]:
    """(agent type, service, instance, version) of a resource's attributes."""
    service = attributes.get("service.name", "")[:MAX_VALUE_CHARS]
    agent_type = attributes.get("agent.type", "")[:32]
    if not agent_type:
        agent_type = "connector" if "connector" in service.lower() else "etl"
    instance = (attributes.get("service.instance.id") or service)[:MAX_VALUE_CHARS]
    return agent_type, service, instance, attributes.get("service.version", "")[:MAX_VALUE_CHARS]


class FleetTracker:
    """The last-seen table: updated by accepted requests, read by /metrics and /api/fleet."""

    def __init__(
        self,
        state_file: Path,
        *,
        silent_after: float = 120.0,
        forget_after: float = 7 * 86400.0,
        save_every: float = 30.0,
        max_per_tenant: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state_file = state_file
        self.silent_after = silent_after
        self.forget_after = forget_after
        self.save_every = save_every
        self.max_per_tenant = max_per_tenant
        self.clock = clock
        self._lock = threading.Lock()
        self._tenants: dict[str, dict[tuple[str, str], Sighting]] = {}
        self._dirty = False
        self._last_save = clock()
        self._save_failing = False
        self.load()

    # -- recording -----------------------------------------------------------------

    def on_accepted(self, tenant: Tenant, request: ExportMetricsServiceRequest) -> None:
        """Note every resource (agent) of a request that reached the Collector; one
        with neither service.name nor service.instance.id names no agent."""
        now = self.clock()
        for resource_metrics in request.resource_metrics:
            attributes = {
                kv.key: kv.value.string_value
                for kv in resource_metrics.resource.attributes
                if kv.value.WhichOneof("value") == "string_value"
            }
            if attributes.get("service.name") or attributes.get("service.instance.id"):
                self.see(tenant.id, *_identity(attributes), now=now)
        if self._dirty and now - self._last_save >= self.save_every:
            self.save()

    def see(
        self,
        tenant_id: str,
        agent_type: str,
        service: str,
        instance: str,
        version: str,
        now: float | None = None,
    ) -> None:
        """Record that this agent was heard from at `now` (default: the clock)."""
        now = self.clock() if now is None else now
        with self._lock:
            agents = self._tenants.setdefault(tenant_id, {})
            row = agents.get((service, instance))
            if row is None:
                if len(agents) >= self.max_per_tenant:
                    oldest = min(agents, key=lambda key: agents[key].last_seen)
                    logger.warning(
                        "tenant %s has over %d agents: forgetting the least recently seen "
                        "(GATEWAY_FLEET_MAX_AGENTS_PER_TENANT)",
                        tenant_id,
                        self.max_per_tenant,
                    )
                    del agents[oldest]
                row = Sighting(tenant_id, agent_type, service, instance, version, now, now)
                agents[(service, instance)] = row
            row.agent_type, row.version = agent_type, version
            row.last_seen = max(row.last_seen, now)
            self._dirty = True

    # -- reading ---------------------------------------------------------------------

    def sightings(self, tenant_ids: Collection[str] | None = None) -> list[Sighting]:
        """The current rows (of `tenant_ids` only, if given), forgotten ones removed."""
        now = self.clock()
        with self._lock:
            self._prune(now)
            return [
                Sighting(**asdict(row))
                for tenant_id, agents in sorted(self._tenants.items())
                if tenant_ids is None or tenant_id in tenant_ids
                for row in sorted(
                    agents.values(), key=lambda r: (r.agent_type, r.service, r.instance)
                )
            ]

    def is_silent(self, row: Sighting, now: float) -> bool:
        """Not heard from for over `silent_after` seconds."""
        return now - row.last_seen > self.silent_after

    def _prune(self, now: float) -> None:
        for tenant_id in list(self._tenants):
            agents = self._tenants[tenant_id]
            newest_start: dict[tuple[str, str], float] = {}
            for row in agents.values():
                key = (row.agent_type, row.service)
                newest_start[key] = max(newest_start.get(key, 0.0), row.first_seen)
            for key, row in list(agents.items()):
                replaced = newest_start[(row.agent_type, row.service)] > row.last_seen
                if now - row.last_seen > self.forget_after or (
                    replaced and self.is_silent(row, now)
                ):
                    del agents[key]
                    self._dirty = True
            if not agents:
                del self._tenants[tenant_id]

    # -- metrics -----------------------------------------------------------------------

    def register_metrics(self, meter: Meter) -> None:
        """The four last-seen gauges (exported as connector_last_seen_seconds, ...)."""
        for family in ("connector", "agent"):
            meter.create_observable_gauge(
                f"{family}.last_seen",
                callbacks=[self._observer(family, since=True)],
                unit="s",
                description=f"Seconds since the gateway last accepted data from this {family}.",
            )
            meter.create_observable_gauge(
                f"{family}.last_seen.timestamp",
                callbacks=[self._observer(family, since=False)],
                unit="s",
                description=f"Unix time the gateway last accepted data from this {family}.",
            )

    def _observer(
        self, family: str, since: bool
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            now = self.clock()
            return [
                Observation(
                    now - row.last_seen if since else row.last_seen,
                    {
                        "tenant_id": row.tenant_id,
                        # Not `instance`: Prometheus would rename it exported_instance,
                        # as the gateway's scrape job keeps its own instance label.
                        "agent_instance": row.instance,
                        "service": row.service,
                        "version": row.version,
                    },
                )
                for row in self.sightings()
                if row.family == family
            ]

        return observe

    # -- persistence ---------------------------------------------------------------------

    def load(self) -> None:
        """Read the state file; a missing or unreadable one starts an empty table."""
        try:
            document = json.loads(self.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            logger.warning("fleet state %s ignored, starting empty: %s", self.state_file, exc)
            return
        rows = document.get("agents") if isinstance(document, dict) else None
        if not isinstance(rows, list) or document.get("version") != STATE_VERSION:
            logger.warning(
                "fleet state %s ignored: not a version %d file", self.state_file, STATE_VERSION
            )
            return
        with self._lock:
            for raw in rows:
                try:
                    row = Sighting(**raw)
                    row.first_seen, row.last_seen = float(row.first_seen), float(row.last_seen)
                except (TypeError, ValueError):
                    continue
                self._tenants.setdefault(row.tenant_id, {})[(row.service, row.instance)] = row
        logger.info("fleet state: %d agent(s) from %s", len(self.sightings()), self.state_file)

    def save(self) -> None:
        """Write the table atomically; a failure is logged (once) and retried later."""
        rows = self.sightings()
        with self._lock:
            self._dirty = False
            self._last_save = self.clock()
        document = {"version": STATE_VERSION, "agents": [asdict(row) for row in rows]}
        try:
            _write_atomically(self.state_file, document)
        except OSError as exc:
            self._dirty = True
            if not self._save_failing:
                logger.warning(
                    "cannot save the fleet state to %s (%s): agents silent before a restart "
                    "will not show after it; point GATEWAY_FLEET_STATE_FILE at a writable path",
                    self.state_file,
                    exc,
                )
            self._save_failing = True
            return
        self._save_failing = False


def _write_atomically(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(document, out)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def create_fleet(settings: GatewaySettings, meter: Meter) -> FleetTracker:
    """The tracker the settings describe, its gauges registered on `meter`."""
    fleet = FleetTracker(
        settings.fleet_state_path,
        silent_after=settings.fleet_silent_after_seconds,
        forget_after=settings.fleet_forget_after_seconds,
        save_every=settings.fleet_save_seconds,
        max_per_tenant=settings.fleet_max_agents_per_tenant,
    )
    fleet.register_metrics(meter)
    return fleet
