"""Fleet status: every agent the gateway hears from, and its lifecycle state.

Told about every authenticated request before it is forwarded (the Collector may
be down; the agent is alive all the same), it keeps one row per agent: tenant,
type, service.name, service.instance.id, version, host, first and last seen, and
a state:

| state | how an agent gets there | pages |
|---|---|---|
| up | it sent within `silent_after` | no |
| silent | running, but nothing for over `silent_after` (died, unreachable, refused) | yes |
| stopped | its last export said `otel_agents.state=stopped` (a clean stop) | no |
| retired | `forget` (the admin API, `otel-gateway agents forget`) | no |

Any export puts an agent back to running. Only `connector` and `etl` agents (the
`agent.type` resource attribute otel_agents sets) get the per-agent last-seen
series the silence alerts use; other OpenTelemetry clients are listed as "other",
and `otel-agents check` (type "check") is not listed at all.

"Last seen" has to come from here, not from the agents' own series: the
Collector keeps exposing a dead agent's last values for minutes. The table is
saved to a state file; after a gateway restart, silence counts again from the
restart for agents that were up (the gateway could not hear them while down).

Connectors and data agents keep their instance id across restarts (otel_agents
derives it from the machine), so a restart is the same row running again, and a
new id beside a silent one is another agent: the silent one still pages. Other
clients often take a new random id per process: a silent "other" row whose
(service, host) has a row first seen after it was replaced, and is retired.

An agent is "over budget" while its exports carry series its OpenTelemetry SDK
folded into an overflow series (attribute `otel.metric.overflow=true`, past the
SDK's cardinality limit: the agent measures with more attribute values than it was
built for, and what lands in the overflow series is lost per value). The row keeps
the metric names and when each was last seen; the mark goes `OVER_BUDGET_SECONDS`
after the last one.

Two live processes can send under one identity (tenant, service.name,
service.instance.id): a machine id shared by containers or cloned machines, or one
`service.instance.id` in OTEL_RESOURCE_ATTRIBUTES for every replica. Their exports
interleave, so the row sees its agent's host.name, or the start time of a
cumulative series (fixed for a process's whole life), go A, B, A: back to a value
it had left. A restart changes them once (A, B, B, ...), a clean stop and a start
likewise, and an agent moving to another gateway replica is one process (one host,
one start time) on each: none of them alternates. The row keeps the processes it
heard (gateway.fleet.processes), and replicas sharing a store merge them, so two
processes whose exports reach different replicas clash on every replica. The row is
then "clashing" (with the hosts seen) until nothing alternates for `silent_after`;
its state is unchanged (the clash is shown beside it, and counted by
gateway_fleet_agents_clashing).

Bounds: a row stopped or retired for `retire_after` (a pod replaced in a rolling
deploy, a decommissioned agent) is dropped, and any row unseen for `forget_after`;
at most `max_per_tenant` rows per tenant, retired, stopped, then least recently
seen first. Each row keeps a copy
of the agent's resource for its fleet series (gateway.fleet.series), cut to
`max_resource_attributes` and `max_resource_bytes`: the attributes that name the
agent first, then the others in the order sent, so that one agent's bloated
resource can neither swell the state file nor the fleet's exports
(gateway.fleet.resource).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from gateway import instruments
from gateway.fleet import processes, store
from gateway.fleet.resource import (
    LIFECYCLE_KEY,
    kept_resource,
    may_overflow,
    overflowing,
    resource_strings,
    series_starts,
)
from gateway.fleet.rows import (
    MAX_CLASH_SERIES,
    MAX_OVER_BUDGET_NAMES,
    OVER_BUDGET_SECONDS,
    Agent,
    AmbiguousAgent,
    FleetLookupError,
    RowState,
    Sighting,
    Status,
    agent_of,
    merged,
)
from gateway.settings import GatewaySettings
from gateway.tenants import Tenant
from gateway.work import Steps, finish

logger = logging.getLogger(__name__)

EVICT_BATCH = 16
"""A full tenant's rows are ranked for eviction a sixteenth at a time: a flood of new
instance ids costs one ranking per that many new rows, not a scan of the table each."""
EVICT_LOG_SECONDS = 60.0
"""A tenant over its number of agents is logged at most once per this many seconds."""
T = TypeVar("T")
_STATE_ORDER = {"retired": 0, "stopped": 1, "running": 2}
PRUNE_SECONDS = 1.0
"""Forgotten rows are removed at most this often (seconds)."""
SAVE_SLICE_ROWS = 500
"""Rows encoded between two turns of other work when the table is saved (~10 ms)."""


def _copy(row: Sighting) -> Sighting:
    """A copy of `row` that shares nothing it may change (asdict's deep copy took
    70 µs a row, this 7: seconds for 100,000 rows, under the lock the request path
    takes)."""
    return replace(
        row,
        resource=dict(row.resource),
        over_budget=dict(row.over_budget),
        processes=list(row.processes),
        clash_hosts=list(row.clash_hosts),
    )


class FleetTracker:
    """The fleet table: updated by requests, read by /metrics and /api/fleet."""

    def __init__(
        self,
        state_file: Path,
        *,
        silent_after: float = 120.0,
        forget_after: float = 7 * 86400.0,
        retire_after: float = 86400.0,
        save_every: float = 30.0,
        max_per_tenant: int = 1000,
        max_resource_attributes: int = 32,
        max_resource_bytes: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state_file = state_file
        self.silent_after = silent_after
        self.forget_after = forget_after
        self.retire_after = retire_after
        self.save_every = save_every
        self.max_per_tenant = max_per_tenant
        self.max_resource_attributes = max_resource_attributes
        self.max_resource_bytes = max_resource_bytes
        self.clock = clock
        self._lock = threading.Lock()
        self._tenants: dict[str, dict[tuple[str, str], Sighting]] = {}
        self._dirty = False
        self._save_failing = False
        self.replica = ""
        """This process's name in a shared state store (gateway.state): `seen_by`."""
        self.scope = uuid.uuid4().hex[:12]
        """Which table this is, the `fleet` label of the counts: this process's own, or
        the shared store's (every replica sharing it says the same), so that rules
        count each agent once however many replicas show it."""
        self._changed: set[tuple[str, str, str]] = set()
        self._evicted: set[tuple[str, str, str]] = set()
        """Rows evicted here since the last exchange: the store drops them too."""
        self._victims: dict[str, list[tuple[tuple[int, float], tuple[str, str]]]] = {}
        self._evict_logged: dict[str, float] = {}
        self._pruned_at = float("-inf")
        self._saving = asyncio.Lock()
        self._writing = threading.Lock()
        self.load()

    # -- recording -----------------------------------------------------------------

    def on_request(
        self, tenant: Tenant, request: ExportMetricsServiceRequest, raw: bytes | None = None
    ) -> None:
        """Note every agent of an authenticated request, and remove the lifecycle
        attribute from its resource (it is for the gateway, not for the series).
        `raw`, the request's protobuf (made here when not given), spares the search
        for overflow series when the attribute's name is nowhere in it (the common
        case)."""
        finish(self.request_steps(tenant, request, raw))

    def request_steps(
        self, tenant: Tenant, request: ExportMetricsServiceRequest, raw: bytes | None = None
    ) -> Steps[None]:
        """`on_request` as steps that may be paused between resources (gateway.work):
        a request of 10,000 resources held the event loop 0.7 s in one block."""
        now = self.clock()
        search = may_overflow(request, raw)
        for resource_metrics in request.resource_metrics:
            yield
            attributes = resource_metrics.resource.attributes
            strings = resource_strings(attributes, 2 * self.max_resource_attributes)
            if LIFECYCLE_KEY in strings:
                kept = [kv for kv in attributes if kv.key != LIFECYCLE_KEY]
                del attributes[:]
                attributes.extend(kept)
            agent = agent_of(strings)
            if agent is not None:
                resource = kept_resource(
                    strings, tenant.id, self.max_resource_attributes, self.max_resource_bytes
                )
                names = overflowing(resource_metrics) if search else ()
                starts = series_starts(resource_metrics)
                agent = replace(agent, resource=resource, overflowing=names, starts=starts)
                self.see(tenant.id, agent, now=now)

    def see(self, tenant_id: str, agent: Agent, now: float | None = None) -> None:
        """Record that this agent was heard from at `now` (default: the clock)."""
        now = self.clock() if now is None else now
        with self._lock:
            agents = self._tenants.setdefault(tenant_id, {})
            key = (agent.service, agent.instance)
            row = agents.get(key)
            if row is None:
                if len(agents) >= self.max_per_tenant:
                    self._evict_one(tenant_id, agents)
                self._evicted.discard((tenant_id, *key))
                row = agents[key] = Sighting(
                    tenant_id,
                    agent.agent_type,
                    agent.service,
                    agent.instance,
                    "",
                    now,
                    now,
                    host=agent.host,
                )
            row.seen_by = self.replica
            # A final export (a clean stop) ends its process: it may arrive after the
            # next process's first one, and says nothing of who runs now.
            if not agent.stopped:
                row.processes, new = processes.heard(row.processes, agent.host, agent.starts, now)
                if new:
                    self._mark_clash(row)
                row.host = agent.host
            row.agent_type, row.version = agent.agent_type, agent.version
            if agent.resource:
                row.resource = dict(agent.resource)
            for name in agent.overflowing:
                row.over_budget.pop(name, None)  # re-inserted last: the newest
                row.over_budget[name] = now
                if len(row.over_budget) > MAX_OVER_BUDGET_NAMES:
                    del row.over_budget[next(iter(row.over_budget))]
            if now >= row.last_seen:
                row.last_seen = now
                row.silence_from = max(row.silence_from, now)
                state: RowState = "stopped" if agent.stopped else "running"
                if state != row.state:
                    row.state, row.state_since = state, now
            self._dirty = True
            if self.replica:  # shared: sent at the next exchange
                self._changed.add((tenant_id, *key))

    def _mark_clash(self, row: Sighting) -> None:
        """Note the latest time two of its processes alternated (gateway.fleet.processes)."""
        seen, hosts = processes.clash(row.processes, self.silent_after)
        if seen > row.clash_seen:
            # The hosts named stay those of the clash's start while it lasts: a process
            # renaming its host at every export must not make a new series of
            # gateway_fleet_agents_clashing (and a new alert) each time.
            if not row.clash_hosts or seen - row.clash_seen > self.silent_after:
                row.clash_hosts = hosts
            row.clash_seen = seen

    def forget(self, tenant_id: str, instances: Iterable[str]) -> list[Sighting]:
        """Retire agents of a tenant at once, by instance id or a unique prefix of one.

        Raises FleetLookupError (nothing is retired) when a name matches no agent,
        AmbiguousAgent when it matches several.
        """
        with self._lock:
            agents = self._tenants.get(tenant_id, {})
            chosen: dict[tuple[str, str], Sighting] = {}
            for name in instances:
                matches = [k for k, r in agents.items() if r.instance == name] or [
                    k for k, r in agents.items() if r.instance.startswith(name)
                ]
                if not name or not matches:
                    raise FleetLookupError(f"tenant {tenant_id!r} has no agent {name!r}")
                if len(matches) > 1:
                    raise AmbiguousAgent(
                        f"{name!r} matches {len(matches)} agents of tenant {tenant_id!r}; "
                        "give more of the instance id"
                    )
                chosen[matches[0]] = agents[matches[0]]
            now = self.clock()
            self._victims.pop(tenant_id, None)  # retired rows go first: rank them again
            for row in chosen.values():
                row.state, row.state_since = "retired", now
                if self.replica:
                    self._changed.add((tenant_id, row.service, row.instance))
            self._dirty = True
            return [_copy(row) for row in chosen.values()]

    # -- reading ---------------------------------------------------------------------

    def sightings(self, tenant_ids: Collection[str] | None = None) -> list[Sighting]:
        """The current rows (of `tenant_ids` only, if given), forgotten ones removed."""
        now = self.clock()
        with self._lock:
            self._prune(now)
            return [
                _copy(row)
                for tenant_id, agents in sorted(self._tenants.items())
                if tenant_ids is None or tenant_id in tenant_ids
                for row in sorted(
                    agents.values(), key=lambda r: (r.agent_type, r.service, r.instance)
                )
            ]

    def status(self, row: Sighting, now: float) -> Status:
        """up, silent, stopped or retired."""
        if row.state != "running":
            return row.state
        return "silent" if now - row.silence_from > self.silent_after else "up"

    def clashing(self, row: Sighting, now: float) -> bool:
        """Whether two live processes sent as this agent within `silent_after`."""
        return row.state == "running" and now - row.clash_seen <= self.silent_after

    def over_budget(self, row: Sighting, now: float) -> list[str]:
        """The metrics of `row` that overflowed within OVER_BUDGET_SECONDS, sorted."""
        # list() copies at once: a /metrics reader may run beside the event loop.
        times = list(row.over_budget.items())
        return sorted(n for n, t in times if now - t <= OVER_BUDGET_SECONDS)

    def _prune(self, now: float) -> None:
        # Every reader prunes first (each /metrics scrape, /api/fleet and /api/usage
        # call): once a second is enough for bounds counted in minutes and days.
        if 0.0 <= now - self._pruned_at < PRUNE_SECONDS:
            return
        self._pruned_at = now
        for tenant_id in list(self._tenants):
            agents = self._tenants[tenant_id]
            newest_start: dict[tuple[str, str, str], float] = {}
            for row in agents.values():
                place = (row.agent_type, row.service, row.host)
                newest_start[place] = max(newest_start.get(place, 0.0), row.first_seen)
            for key, row in list(agents.items()):
                if now - row.last_seen > self.forget_after or (
                    row.state != "running" and now - row.state_since > self.retire_after
                ):
                    del agents[key]
                    self._dirty = True
                elif (
                    row.family is None
                    and self.status(row, now) == "silent"
                    and newest_start[(row.agent_type, row.service, row.host)] > row.last_seen
                ):
                    row.state, row.state_since = "retired", now  # replaced on its host
                    self._dirty = True
            if not agents:
                del self._tenants[tenant_id]

    def _evict_one(self, tenant_id: str, agents: dict[tuple[str, str], Sighting]) -> None:
        """Drop the tenant's retired, stopped, then least recently seen row."""

        def rank(row: Sighting) -> tuple[int, float]:
            return _STATE_ORDER[row.state], row.last_seen

        victims = self._victims.setdefault(tenant_id, [])
        while True:
            if not victims:
                ranked = heapq.nsmallest(
                    max(1, len(agents) // EVICT_BATCH), ((rank(r), k) for k, r in agents.items())
                )
                victims.extend(reversed(ranked))  # pop() takes the first
            ranking, key = victims.pop()
            row = agents.get(key)
            if row is not None and rank(row) == ranking:  # not heard since it was ranked
                break
        del agents[key]
        if self.replica:
            self._evicted.add((tenant_id, *key))
            self._changed.discard((tenant_id, *key))
        now = self.clock()
        if now - self._evict_logged.get(tenant_id, -EVICT_LOG_SECONDS) >= EVICT_LOG_SECONDS:
            self._evict_logged[tenant_id] = now
            logger.warning(
                "tenant %s has over %d agents: forgetting the least recently seen "
                "(GATEWAY_FLEET_MAX_AGENTS_PER_TENANT)",
                tenant_id,
                self.max_per_tenant,
            )

    # -- sharing (gateway.state) -------------------------------------------------------

    def take_changed(self, encode: Callable[[Sighting], T]) -> list[T]:
        """`encode` of each row changed here since the last call (for the shared store),
        called under the lock: the rows need no copies."""
        with self._lock:
            keys, self._changed = self._changed, set()
            return [
                encode(row)
                for tenant_id, service, instance in keys
                if (row := self._tenants.get(tenant_id, {}).get((service, instance)))
            ]

    def mark_changed(self, keys: Iterable[tuple[str, str, str]]) -> None:
        """Send the rows of these (tenant, service, instance) again at the next exchange
        (this one failed)."""
        with self._lock:
            self._changed.update(keys)

    def take_evicted(self) -> list[tuple[str, str, str]]:
        """The (tenant, service, instance) of the rows evicted here since the last call:
        over `max_per_tenant`, the store must drop them too, or a tenant that keeps
        making up instance ids would fill it."""
        with self._lock:
            keys, self._evicted = self._evicted, set()
            return sorted(keys)

    def mark_evicted(self, keys: Iterable[tuple[str, str, str]]) -> None:
        """Drop these from the store at the next exchange (this one failed)."""
        with self._lock:
            self._evicted.update(keys)

    def mark_all_changed(self) -> None:
        """Send every row again at the next exchange (the store was emptied)."""
        with self._lock:
            self._changed = {(t, s, i) for t, agents in self._tenants.items() for (s, i) in agents}

    def merge(self, rows: Iterable[Sighting]) -> None:
        """Take in rows other processes saw (gateway.state): `merged` with ours."""
        with self._lock:
            for new in rows:
                agents = self._tenants.setdefault(new.tenant_id, {})
                key = (new.service, new.instance)
                old = agents.get(key)
                if old is None:
                    self._evicted.discard((new.tenant_id, *key))  # in the store again
                    if len(agents) >= self.max_per_tenant:
                        self._evict_one(new.tenant_id, agents)
                row = agents[key] = new if old is None else merged(old, new)
                self._mark_clash(row)  # processes heard by other replicas may alternate
            self._dirty = True

    # -- metrics -----------------------------------------------------------------------

    def register_metrics(self, meter: Meter) -> None:
        """The fleet's counts by state (gateway_fleet_agents). The per-agent last-seen
        series go to the Collectors (gateway.fleet.series)."""
        instruments.FLEET_AGENTS.observe(meter, self._observe_counts)
        instruments.FLEET_AGENTS_OVER_BUDGET.observe(meter, self._observe_over_budget)
        instruments.FLEET_AGENTS_CLASHING.observe(meter, self._observe_clashing)

    def rows(self) -> list[Sighting]:
        """The rows themselves, not copies, for a reader on the event loop that only
        reads them (gateway.fleet.series); forgotten ones are removed first."""
        now = self.clock()
        with self._lock:
            self._prune(now)
            return [row for agents in self._tenants.values() for row in agents.values()]

    def _observe_counts(self, options: CallbackOptions) -> Iterable[Observation]:
        now = self.clock()
        counts: dict[tuple[str, str, str], int] = {}
        for row in self.rows():  # no copies, as below
            key = (row.tenant_id, row.agent_type, self.status(row, now))
            counts[key] = counts.get(key, 0) + 1
        return [
            Observation(
                count, {"tenant_id": tenant, "type": kind, "state": state, "fleet": self.scope}
            )
            for (tenant, kind, state), count in counts.items()
        ]

    def _observe_over_budget(self, options: CallbackOptions) -> Iterable[Observation]:
        now = self.clock()
        counts: dict[str, int] = {}
        for row in self.rows():  # no copies: 10,000 agents are read at every scrape
            over = row.state != "retired" and bool(self.over_budget(row, now))
            counts[row.tenant_id] = counts.get(row.tenant_id, 0) + over
        return [Observation(count, {"tenant_id": tenant}) for tenant, count in counts.items()]

    def _observe_clashing(self, options: CallbackOptions) -> Iterable[Observation]:
        now = self.clock()
        named: dict[str, int] = {}
        more: dict[str, int] = {}
        observations = []
        for row in self.rows():
            if not self.clashing(row, now):
                continue
            if named.get(row.tenant_id, 0) >= MAX_CLASH_SERIES:
                more[row.tenant_id] = more.get(row.tenant_id, 0) + 1
                continue
            named[row.tenant_id] = named.get(row.tenant_id, 0) + 1
            labels = {
                "tenant_id": row.tenant_id,
                "type": row.agent_type,
                "service": row.service,
                "service_instance_id": row.instance,
                "hosts": ",".join(row.clash_hosts),
            }
            observations.append(Observation(1, labels))
        for tenant, count in more.items():
            labels = {"tenant_id": tenant, "type": "", "service": "", "service_instance_id": "+"}
            observations.append(Observation(count, labels | {"hosts": ""}))
        return observations

    # -- persistence ---------------------------------------------------------------------

    def load(self) -> None:
        """Read the state file; a missing or unreadable one starts an empty table."""
        rows, fleet = store.read(
            self.state_file,
            now=self.clock(),
            silent_after=self.silent_after,
            max_resource_attributes=self.max_resource_attributes,
            max_resource_bytes=self.max_resource_bytes,
        )
        with self._lock:
            for row in rows:
                self._tenants.setdefault(row.tenant_id, {})[(row.service, row.instance)] = row
        # The saved table is the store's when replicas share one: counted under its
        # label until the store answers (under a new one, every agent counted twice
        # for as long as the store was away).
        self.scope = fleet or self.scope
        if rows:
            logger.info("fleet state: %d agent(s) from %s", len(rows), self.state_file)

    async def keep_saved(self) -> None:
        """Save the table every `save_every` seconds while it changes, until cancelled."""
        while True:
            await asyncio.sleep(self.save_every)
            if not self._dirty:
                continue
            try:
                await self.save_in_steps()
            except Exception:  # the next save may do better; never end the saves
                self._dirty = True
                logger.exception("saving the fleet state failed")

    async def save_in_steps(self) -> None:
        """Write the table atomically, off the request path and in pieces: rows are
        encoded `SAVE_SLICE_ROWS` at a time, other work running in between, and written
        on a worker thread (50,000 rows saved at once held the event loop 1.2-1.4 s)."""
        async with self._saving:
            with self._lock:
                self._dirty = False
                self._prune(self.clock())
                rows = [row for agents in self._tenants.values() for row in agents.values()]
            lines: list[str] = []
            for at in range(0, len(rows), SAVE_SLICE_ROWS):
                with self._lock:
                    lines.extend(store.encoded(row) for row in rows[at : at + SAVE_SLICE_ROWS])
                await asyncio.sleep(0)
            await asyncio.to_thread(self._write, lines, self.clock())

    def save(self) -> None:
        """Write the table atomically now (at exit); a failure is logged (once)."""
        with self._lock:
            self._dirty = False
            self._prune(self.clock())
            lines = [
                store.encoded(row) for agents in self._tenants.values() for row in agents.values()
            ]
        self._write(lines, self.clock())

    def _write(self, lines: list[str], saved_at: float) -> None:
        """Write the `store.encoded` rows to the state file; when it cannot, the table
        stays to be saved, and the failure is logged once. One write at a time: the
        last save at exit waits for a background one still writing, so that the
        newest table is the one left in the file."""
        try:
            with self._writing:
                store.write_encoded(self.state_file, lines, saved_at, self.scope)
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


def create_fleet(settings: GatewaySettings, meter: Meter) -> FleetTracker:
    """The tracker the settings describe, its gauges registered on `meter`."""
    fleet = FleetTracker(
        settings.fleet_state_path,
        silent_after=settings.fleet_silent_after_seconds,
        forget_after=settings.fleet_forget_after_seconds,
        retire_after=settings.fleet_retire_after_seconds,
        save_every=settings.fleet_save_seconds,
        max_per_tenant=settings.fleet_max_agents_per_tenant,
        max_resource_attributes=settings.fleet_max_resource_attributes,
        max_resource_bytes=settings.fleet_max_resource_bytes,
    )
    fleet.register_metrics(meter)
    return fleet
