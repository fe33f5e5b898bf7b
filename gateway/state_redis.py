"""The state gateway processes share in Redis (or any server speaking its protocol).

Every GATEWAY_STATE_SYNC_SECONDS one background task exchanges, in a few pipelined
calls (the request path never waits for Redis):

- membership: this process and the time (`replicas` zset); back, the processes
  seen within `REPLICA_TTL`;
- fleet: the rows changed here, merged in Redis by `MERGE` (`fleet` hash), and the
  rows evicted here (a tenant over its number of agents) deleted, so the hash holds
  about what the processes' tables do; back, in the same call, the rows changed
  anywhere since the last look (`fleet:changed`, by sequence number) but for those
  stored as this process sent them (with one process, all of them);
- rate: what each tenant spent on its fallback share; back, tokens leased from its
  global bucket (`LEASE`), enough for two exchanges at its recent demand;
- series, every `COUNTS_SECONDS`: the global ids of the series new here, and, once
  per time bucket, of those seen in the bucket that ended
  (`series:<tenant>:<bucket>`, a HyperLogLog per tenant and bucket, `SERIES_BUCKETS`
  of them per window); back, each tenant's distinct count over the buckets of the
  window (`SERIES_COUNT`: PFCOUNT, 0.81 % standard error), of which what this process
  does not hold counts against the limit here;
- throttle: failed authentications per address (`authfail:<address>`, expiring with
  the window); back, the addresses anyone blocked (`blocked` zset);
- usage, every `COUNTS_SECONDS`: this process's recent counts (`usage` hash, one
  field per process, written when they changed) and, once a minute, its completed
  minutes (`usage:hour` hash, and `usage:version` counts the writes); back, the
  others' recent counts, and their completed minutes when the version moved (a gone
  process's last hour still counts, its rates no longer).

The store may be slow, unreachable or restarted empty: exports go on; each process
falls back to its share of each limit (the setting ÷ the last known number of
processes) and reports the view as partial; the `epoch` key tells an emptied store,
and every process then sends its whole fleet table again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gateway import instruments
from gateway.fleet import FleetTracker, Sighting
from gateway.fleet.processes import MAX_PROCESSES, cleaned
from gateway.fleet.store import TEXTS, TIMES, clash_hosts, over_budget_times
from gateway.ingest import Ingestor
from gateway.ratelimit import LeasedRateLimiter
from gateway.series import ActiveSeries
from gateway.settings import GatewaySettings
from gateway.throttle import FailureThrottle
from gateway.usage import Usage

logger = logging.getLogger(__name__)

PREFIX = "otelgw:"
REPLICA_TTL = 10.0
"""A process not heard from for this long (seconds) no longer counts as a replica."""
FLEET_BATCH = 500
"""Fleet rows per merge call, and per look at the rows changed elsewhere."""
SWEEP_EVERY = 600
"""Exchanges between two sweeps of the forgotten rows out of the store."""
COUNTS_SECONDS = 5.0
"""Series counts and usage are exchanged this often (or at every exchange, if those
are further apart): their cost is mostly per exchange, not per request, and a few
seconds' lag is within what they promise (a series another process already has counts
as new here until then; others' rates are averaged over 10 s)."""
MAX_PULLS = 40
"""Looks per exchange besides those that send rows: 20,000 changed rows (the rest at
the next exchange)."""
SERIES_BUCKETS = 5
"""Time buckets per active-series window: a series is counted until the bucket it was
last added to leaves the window, i.e. for up to a fifth of the window longer."""
SERIES_BATCH = 10_000
"""Global ids per PFADD."""
SERIES_COUNT = """
local tenants, first, last = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', tenants, '-inf', first - 1)
local reply = {}
for _, tenant in ipairs(redis.call('ZRANGE', tenants, 0, -1)) do
  local keys = {}
  for bucket = first, last do keys[#keys + 1] = ARGV[3] .. tenant .. ':' .. bucket end
  reply[#reply + 1] = tenant
  reply[#reply + 1] = redis.call('PFCOUNT', unpack(keys))
end
return reply
"""
"""Every tenant with series in the window's buckets, and its distinct count over them:
one call, however many tenants."""

MERGE = """
local function union(a, b)
  local found, all = {}, {}
  for _, list in ipairs({a, b}) do
    for _, p in ipairs(type(list) == 'table' and list or {}) do
      local key = p[1] .. '\\0' .. p[2] .. '\\0' .. p[3]
      local known = found[key]
      if known then
        known[4] = math.min(known[4], p[4])
        known[5] = math.max(known[5], p[5])
      else
        found[key] = {p[1], p[2], p[3], p[4], p[5]}
        table.insert(all, found[key])
      end
    end
  end
  table.sort(all, function(x, y)
    if x[5] ~= y[5] then return x[5] > y[5] end
    if x[1] ~= y[1] then return x[1] < y[1] end
    if x[2] ~= y[2] then return x[2] < y[2] end
    return x[3] < y[3]
  end)
  local kept = {}
  for i = 1, math.min(#all, tonumber(ARGV[1])) do kept[i] = all[i] end
  return kept
end
local function same(a, b)
  if #a ~= #b then return false end
  for i = 1, #a do
    for j = 1, 5 do
      if a[i][j] ~= b[i][j] then return false end
    end
  end
  return true
end
local function merged(raw, new)
  local old = cjson.decode(raw)
  local sent = type(new.processes) == 'table' and new.processes or {}
  local base, other = new, old
  if old.last_seen > new.last_seen then base, other = old, new end
  -- The row sent is the result when the stored one adds nothing to it.
  local mine = base == new and new.first_seen <= old.first_seen
    and new.silence_from >= old.silence_from
  base.first_seen = math.min(old.first_seen, new.first_seen)
  base.silence_from = math.max(old.silence_from, new.silence_from)
  if other.state_since > base.state_since then
    base.state = other.state
    base.state_since = other.state_since
    mine = false
  end
  base.processes = union(old.processes, new.processes)
  if (other.clash_seen or 0) > (base.clash_seen or 0) then
    base.clash_seen = other.clash_seen
    base.clash_hosts = other.clash_hosts
    mine = false
  end
  return cjson.encode(base), mine and same(base.processes, sent)
end
local as_sent, writer = {}, ARGV[4]
for i = 5, #ARGV, 2 do
  local field, sent = ARGV[i], ARGV[i + 1]
  -- Stored as this process sent it and changed by no one since (its last change is
  -- still the one noted with the writer: an older gateway's merge notes no writer,
  -- but every version notes its changes): its table holds all of that row, and so
  -- does the row it sends now (no decoding, the common case).
  local tag = redis.call('HGET', KEYS[4], field)
  local mine = tag and tag == writer .. ' ' .. tostring(redis.call('ZSCORE', KEYS[3], field))
  local raw = not mine and redis.call('HGET', KEYS[1], field)
  local ok, value, same_as_sent = false, sent, true
  if raw then ok, value, same_as_sent = pcall(merged, raw, cjson.decode(sent)) end
  -- A stored row that cannot be merged (no JSON, a field missing, a number cjson
  -- cannot write) is replaced by the one sent: it must not fail the others.
  if not ok then same_as_sent = true end
  -- As sent, the row is kept as sent: cjson would write its times to 14 digits (0.1 ms).
  if same_as_sent then value = sent end
  local seq = redis.call('INCR', KEYS[2])
  redis.call('HSET', KEYS[1], field, value)
  redis.call('ZADD', KEYS[3], seq, field)
  if same_as_sent then
    as_sent[seq] = true
    redis.call('HSET', KEYS[4], field, writer .. ' ' .. seq)
  else
    redis.call('HDEL', KEYS[4], field)
  end
end
local cursor = tonumber(ARGV[2])
local changed = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. ARGV[2], '+inf',
  'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
local reply = {0, #changed / 2}
for i = 1, #changed, 2 do
  local seq = tonumber(changed[i + 1])
  cursor = math.max(cursor, seq)
  local raw = not as_sent[seq] and redis.call('HGET', KEYS[1], changed[i])
  if raw then reply[#reply + 1] = raw end
end
reply[1] = cursor
return reply
"""
"""Merge fleet rows as gateway.fleet.rows.merged does (the processes as
gateway.fleet.processes.union, at most ARGV[1]), and note each row's change; a stored
row that cannot be merged is replaced by the one sent. A row stored as sent notes its
writer (ARGV[4], one per process run, in `fleet:writer`) and its change number: the
writer's next row of that agent replaces it unread while no one changed it since.
Then the rows changed since the cursor ARGV[2] (at most ARGV[3] changes): the new
cursor, the number of changes, and the rows, but for those stored as they were sent
here (this process holds them)."""

LEASE = """
local per_second, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local want, debt = tonumber(ARGV[3]), tonumber(ARGV[4])
local outage = tonumber(ARGV[5]) or 0
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local v = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = tonumber(v[1]) or burst
local updated = tonumber(v[2]) or now
-- What was spent on the share since the last exchange is charged before the cap:
-- the refill of the same time paid for it.
tokens = tokens + math.max(0, now - updated) * per_second - debt
tokens = math.max(-burst, math.min(burst, tokens))
-- What was spent on the share while the store was away uses up the refill of that
-- time, never more (the share held the tenant to its part of the rate meanwhile;
-- forgiven, a store failing every other exchange let twice the rate through).
if tokens > 0 then tokens = math.max(0, tokens - outage) end
local grant = 0
if tokens >= 1 then grant = math.min(want, math.floor(tokens)) end
tokens = tokens - grant
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'updated', tostring(now))
redis.call('EXPIRE', KEYS[1], 3600)
return grant
"""
"""One tenant's global token bucket (refilled on Redis's clock): take what was spent
on the fallback share (what was spent while the store was away: down to empty at
most), then lease up to `want` whole tokens."""

_FIELDS = {f.name for f in fields(Sighting)}


def _field(row: Sighting) -> str:
    return json.dumps([row.tenant_id, row.service, row.instance])


def _encoded(row: Sighting) -> tuple[tuple[str, str, str], list[str]]:
    """A row's key, and its field and value in the `fleet` hash (made while the fleet
    table holds its lock: no copy of the row is needed)."""
    return (row.tenant_id, row.service, row.instance), [_field(row), json.dumps(vars(row))]


def _row(raw: bytes | str | None) -> Sighting | None:
    if raw is None:
        return None
    try:
        document = json.loads(raw)
        row = Sighting(**{k: v for k, v in document.items() if k in _FIELDS})
        if not all(isinstance(getattr(row, name), str) for name in TEXTS):
            return None
        for name in TIMES:
            setattr(row, name, float(getattr(row, name)))
        if not all(math.isfinite(getattr(row, name)) for name in TIMES):
            return None  # it could not be written back (cjson)
        # cjson writes an empty dict or list as {}: a list here is the wrong kind.
        resource = row.resource if isinstance(row.resource, dict) else {}
        row.resource = {k: v for k, v in resource.items() if isinstance(v, str)}
        row.over_budget = over_budget_times(row.over_budget)
        row.processes = cleaned(row.processes)
        row.clash_hosts = clash_hosts(row.clash_hosts)
        return row
    except (ValueError, TypeError, AttributeError):
        return None


def _document(raw: bytes | str | None) -> dict[str, Any]:
    try:
        document = json.loads(raw or "{}")
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


class RedisState:
    """The fleet, rate budgets, series counts and throttle shared through Redis."""

    shared = True

    def __init__(
        self,
        client: Redis,
        fleet: FleetTracker,
        rate: LeasedRateLimiter,
        series: ActiveSeries,
        throttle: FailureThrottle,
        *,
        interval: float = 1.0,
        timeout: float = 1.0,
        replica: str = "",
        series_clock: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
        usage: Usage | None = None,
        counts_seconds: float = COUNTS_SECONDS,
    ) -> None:
        self.client = client
        self.fleet, self.rate, self.series, self.throttle = fleet, rate, series, throttle
        self.interval, self.timeout = interval, timeout
        self.replica = replica or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        # Names the rows stored as this run sent them (a restarted replica keeps its
        # name, not its table).
        self.writer = uuid.uuid4().hex
        self.series_clock, self.clock = series_clock, clock
        self.up = False
        self.replicas = 1
        self.live: set[str] = set()
        self.epoch: str | None = None
        self.cursor = 0
        self.exchanges = 0
        self.counts_seconds = counts_seconds
        self._counted_at: float | None = None  # None: at the next exchange
        self.usage = usage
        self._usage_sent = ("", "")
        self._usage_epoch: str | None = None
        self._usage_version: bytes | None = None
        self._usage_minute: int | None = None
        self._usage_hours: dict[str, dict[str, Any]] = {}
        fleet.replica = self.replica
        series.shared = True
        throttle.failures = {}

    @classmethod
    def create(
        cls,
        settings: GatewaySettings,
        fleet: FleetTracker,
        ingestor: Ingestor,
        throttle: FailureThrottle,
        meter: Meter,
    ) -> RedisState:
        """The store at GATEWAY_STATE_URL (nothing is sent before `run`)."""
        timeout = settings.state_timeout_seconds
        client = Redis.from_url(
            settings.state_url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # Once, on a new connection: those of a restarted store are all dead.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        rate = LeasedRateLimiter()
        ingestor.rate = rate
        state = cls(
            client,
            fleet,
            rate,
            ingestor.series,
            throttle,
            interval=settings.state_sync_seconds,
            timeout=timeout,
            replica=settings.state_replica_name,
            usage=ingestor.usage,
        )
        instruments.STATE_STORE_UP.observe(meter, state._observe_up)
        instruments.STATE_STORE_REPLICAS.observe(meter, state._observe_replicas)
        return state

    # -- what the gateway asks ---------------------------------------------------------

    def owns(self, row: Sighting) -> bool:
        """The process that heard the agent last sends its series; when that one is
        gone, the live process it hashes to (rendezvous hashing)."""
        if row.seen_by == self.replica:
            return True
        if row.seen_by in self.live:
            return False
        name = f"{row.tenant_id}\0{row.service}\0{row.instance}"

        def score(replica: str) -> bytes:
            return hashlib.blake2b(f"{replica}\0{name}".encode(), digest_size=8).digest()

        return max(self.live | {self.replica}, key=score) == self.replica

    def document(self) -> dict[str, Any]:
        """Shared, up, how many replicas; partial when the store cannot be reached."""
        return {
            "store": "redis",
            "up": self.up,
            "replicas": self.replicas,
            "partial": not self.up,
        }

    # -- the exchange ----------------------------------------------------------------------

    async def run(self) -> None:
        """Exchange every `interval` until cancelled; a failure marks the store down
        until an exchange succeeds again."""
        while True:
            started = time.monotonic()
            await self.exchange_once()
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def exchange_once(self) -> bool:
        """One exchange; True when the store answered it all."""
        try:
            await asyncio.wait_for(self.exchange(), timeout=4 * self.timeout)
        except Exception as exc:
            # Not only an unreachable store: a value this process cannot read (written
            # by another version, or by hand) must not end the exchanges for good.
            unreadable = not isinstance(exc, RedisError | OSError | TimeoutError)
            if self.up or self.exchanges == 0:
                logger.warning(
                    "state store %s (%s): exports go on, each limit falls back to "
                    "its share (the setting / %d replica(s)), the fleet view is partial",
                    "holds what this gateway cannot read" if unreadable else "unreachable",
                    exc or type(exc).__name__,
                    self.replicas,
                    exc_info=unreadable,
                )
            self._set_up(False)
            self.exchanges += 1
            # A timed-out connection may still get its answer later: start afresh.
            await self.client.connection_pool.disconnect()
            return False
        if not self.up:
            logger.info("state store reachable: %d replica(s) share the state", self.replicas)
        self._set_up(True)
        self.exchanges += 1
        return True

    def _set_up(self, up: bool) -> None:
        self.up = up
        self.rate.connected = up
        self.rate.replicas = self.replicas
        self.series.replicas = 0 if up else self.replicas

    async def exchange(self) -> None:
        """Membership, fleet, rate leases, throttle: one round each; series counts and
        usage every `counts_seconds`."""
        await self._membership()
        await self._fleet()
        if self.exchanges % SWEEP_EVERY == SWEEP_EVERY - 1:
            await self._sweep()
        await self._rates()
        await self._throttle()
        now = time.monotonic()
        if self._counted_at is None or now - self._counted_at >= self.counts_seconds:
            await self._series()
            await self._usage()
            self._counted_at = now

    async def _membership(self) -> None:
        now = self.clock()
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(PREFIX + "replicas", {self.replica: now})
        pipe.zremrangebyscore(PREFIX + "replicas", "-inf", now - REPLICA_TTL)
        pipe.zrange(PREFIX + "replicas", 0, -1)
        pipe.set(PREFIX + "epoch", uuid.uuid4().hex, nx=True)
        pipe.get(PREFIX + "epoch")
        _, _, live, _, epoch = await pipe.execute()
        self.live = {m.decode() for m in live}
        self.replicas = max(1, len(self.live))
        if epoch != self.epoch:
            # The store's epoch names the shared table: the `fleet` label of the counts.
            self.fleet.scope = epoch.decode()[:12]
            if self.epoch is not None:
                logger.warning("the state store was emptied: sending this process's state again")
            self.epoch, self.cursor = epoch, 0
            self.fleet.mark_all_changed()
            self._counted_at = None

    async def _fleet(self) -> None:
        evicted = self.fleet.take_evicted()
        try:
            for at in range(0, len(evicted), FLEET_BATCH):
                await self._delete_rows(
                    [json.dumps(list(key)) for key in evicted[at : at + FLEET_BATCH]]
                )
        except BaseException:
            self.fleet.mark_evicted(evicted)
            raise
        rows = self.fleet.take_changed(_encoded)
        try:
            more = await self._merge(rows[:FLEET_BATCH])
            for at in range(FLEET_BATCH, len(rows), FLEET_BATCH):
                more = await self._merge(rows[at : at + FLEET_BATCH])
        except BaseException:
            self.fleet.mark_changed(key for key, _ in rows)  # sent again at the next exchange
            raise
        for _ in range(MAX_PULLS):
            if not more:
                return
            await asyncio.sleep(0)  # exports go on between batches
            more = await self._merge([])

    async def _merge(self, rows: Sequence[tuple[tuple[str, str, str], list[str]]]) -> bool:
        """Send `rows` (field and row of each, at most FLEET_BATCH) and take in the rows
        changed since the cursor; True when more changes wait."""
        args = [str(MAX_PROCESSES), str(self.cursor), str(FLEET_BATCH), self.writer]
        for _, sent in rows:
            args += sent
        keys = [PREFIX + name for name in ("fleet", "fleet:seq", "fleet:changed", "fleet:writer")]
        cursor, count, *values = await self.client.eval(MERGE, len(keys), *keys, *args)
        if values:
            self.fleet.merge(got for raw in values if (got := _row(raw)) is not None)
        self.cursor = int(cursor)
        return int(count) >= FLEET_BATCH

    async def _sweep(self) -> None:
        """Drop the rows every process has forgotten (unseen for `forget_after`)."""
        horizon = self.clock() - self.fleet.forget_after
        stale = []
        async for name, raw in self.client.hscan_iter(PREFIX + "fleet", count=FLEET_BATCH):
            row = _row(raw)
            if row is None or row.last_seen < horizon:
                stale.append(name)
        for at in range(0, len(stale), FLEET_BATCH):
            await self._delete_rows(stale[at : at + FLEET_BATCH])

    async def _delete_rows(self, names: Sequence[str | bytes]) -> None:
        """Delete fleet rows (their fields), their change and their writer."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hdel(PREFIX + "fleet", *names)
        pipe.zrem(PREFIX + "fleet:changed", *names)
        pipe.hdel(PREFIX + "fleet:writer", *names)
        await pipe.execute()

    async def _rates(self) -> None:
        wanted = self.rate.wanted(self.interval)
        asks = [(lease, want) for lease, want in wanted.values() if want or lease.debt]
        tenants = [t for t, (lease, want) in wanted.items() if want or lease.debt]
        if not asks:
            return
        pipe = self.client.pipeline(transaction=False)
        for tenant_id, (lease, want) in zip(tenants, asks, strict=True):
            # All of it: at a rate over the burst per exchange, charging at most the
            # burst forgave the rest each time (1.4 times the rate through two
            # replicas). What the share took while the store was away only empties
            # the bucket (LEASE).
            outage = lease.outage_debt
            args = (lease.per_second, lease.burst, want, lease.debt - outage, outage)
            pipe.eval(LEASE, 1, f"{PREFIX}rate:{tenant_id}", *args)
        grants = await pipe.execute()
        for (lease, want), grant in zip(asks, grants, strict=True):
            lease.pool += int(grant)
            lease.short = int(grant) < want
            lease.debt = lease.outage_debt = 0
            lease.leased = True

    async def _series(self) -> None:
        series = self.series
        seconds = series.window_seconds / SERIES_BUCKETS
        bucket = int(self.clock() // seconds)
        pending = series.pending(self.series_clock(), bucket, self.epoch)
        expire = int(series.window_seconds + 2 * seconds)
        tenants = PREFIX + "series:tenants"
        pipe = self.client.pipeline(transaction=False)
        for (tenant_id, into), found in pending.ids.items():
            if not found:
                continue
            key = f"{PREFIX}series:{tenant_id}:{into}"
            for at in range(0, len(found), SERIES_BATCH):
                pipe.pfadd(key, *found[at : at + SERIES_BATCH])
            pipe.expire(key, expire)
        if pending.ids:
            pipe.zadd(tenants, {tenant_id: bucket for tenant_id, _ in pending.ids})
        keys = (bucket - SERIES_BUCKETS, bucket, f"{PREFIX}series:")
        pipe.eval(SERIES_COUNT, 1, tenants, *keys)
        try:
            reply = (await pipe.execute())[-1]
        except BaseException:
            series.not_added()
            raise
        series.added(pending)
        pairs = zip(reply[::2], reply[1::2], strict=True)
        totals = {name.decode(): int(total) for name, total in pairs}
        counts = series.counts(self.series_clock())
        others: dict[str, int] = {}
        if self.live - {self.replica}:  # alone, this process's own count is exact
            for tenant_id, total in totals.items():
                if (other := total - counts.get(tenant_id, 0)) > 0:
                    others[tenant_id] = other
        series.others = others

    async def _throttle(self) -> None:
        throttle = self.throttle
        failures = throttle.take_failures()
        now = self.clock()
        if failures and throttle.max_failures:
            pipe = self.client.pipeline(transaction=False)
            for address, count in failures.items():
                key = f"{PREFIX}authfail:{address}"
                pipe.incrby(key, count)
                pipe.expire(key, max(1, int(throttle.window_seconds)), nx=True)
            totals = (await pipe.execute())[::2]
            blocked = {
                address: now + throttle.block_seconds
                for address, total in zip(failures, totals, strict=True)
                if int(total) >= throttle.max_failures
            }
            if blocked:
                await self.client.zadd(PREFIX + "blocked", blocked, gt=True)
        pipe = self.client.pipeline(transaction=False)
        pipe.zremrangebyscore(PREFIX + "blocked", "-inf", now)
        pipe.zrangebyscore(PREFIX + "blocked", now, "+inf", withscores=True)
        _, active = await pipe.execute()
        for address, until in active:
            throttle.block_for(address.decode(), until - now)

    async def _usage(self) -> None:
        if self.usage is None:
            return
        if self._usage_epoch != self.epoch:  # an emptied store: send everything again
            self._usage_sent, self._usage_epoch = ("", ""), self.epoch
            self._usage_minute = None
        recent = json.dumps(self.usage.recent(), sort_keys=True)
        completed, minute = self._usage_sent[1], int(self.usage.clock() // 60)
        key, hour, version = PREFIX + "usage", PREFIX + "usage:hour", PREFIX + "usage:version"
        pipe = self.client.pipeline(transaction=False)
        if minute != self._usage_minute:  # completed minutes change when a minute does
            completed = json.dumps(self.usage.completed(), sort_keys=True)
        # The completed minutes first: who sees this process's new minute sees them too.
        if completed != self._usage_sent[1]:
            pipe.hset(hour, self.replica, completed)
            pipe.incr(version)
        if recent != self._usage_sent[0]:
            pipe.hset(key, self.replica, recent)
        pipe.hgetall(key)
        pipe.get(version)
        *_, recents, seen = await pipe.execute()
        self._usage_sent, self._usage_minute = (recent, completed), minute
        if seen != self._usage_version:  # some process completed a minute: read them all
            hours = await self.client.hgetall(hour)
            self._usage_hours = {
                name.decode() if isinstance(name, bytes) else name: _document(raw)
                for name, raw in hours.items()
            }
            self._usage_version = seen
        published: list[tuple[dict[str, Any], dict[str, Any], bool]] = []
        stale: list[str] = []
        for name, raw in recents.items():
            replica = name.decode()
            if replica == self.replica:
                continue
            theirs = (_document(raw), self._usage_hours.get(replica, {}))
            if replica not in self.live and self.usage.expired(*theirs):
                stale.append(replica)  # left over an hour ago
            else:
                published.append((*theirs, replica in self.live))
        if stale:
            pipe = self.client.pipeline(transaction=False)
            pipe.hdel(key, *stale)
            pipe.hdel(hour, *stale)
            await pipe.execute()
        self.usage.merge_others(published)

    async def close(self) -> None:
        """Send this process's last changes and leave the replicas."""
        try:
            await asyncio.wait_for(self._fleet(), timeout=2 * self.timeout)
            await asyncio.wait_for(
                self.client.zrem(PREFIX + "replicas", self.replica), timeout=self.timeout
            )
        except (RedisError, OSError, TimeoutError) as exc:
            logger.warning("could not leave the state store cleanly: %s", exc)
        await self.client.aclose()

    # -- metrics ---------------------------------------------------------------------------

    def _observe_up(self, options: CallbackOptions) -> Iterable[Observation]:
        del options
        return [Observation(1 if self.up else 0)]

    def _observe_replicas(self, options: CallbackOptions) -> Sequence[Observation]:
        del options
        return [Observation(self.replicas)]
