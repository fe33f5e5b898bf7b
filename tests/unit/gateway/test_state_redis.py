"""Two gateway processes' worth of state shared through a real redis-server.

Two in-process gateways (each its own Gateway, as two replicas would be) point at one
`redis-server --save '' --appendonly no` on a free port; the exchanges are driven
by hand (`exchange_once`) except where the timing is the point (the rate budget).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc
import pytest
from gateway_fixtures import (
    RunningGateway,
    counter_request,
    exchange,
    store,
    two_gateways,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from gateway.fleet import Sighting
from gateway.fleet import series as fleet_series
from gateway.fleet.api import fleet_document
from stack.redis_server import RedisServer

pytestmark = pytest.mark.slow


def agent(service: str, instance: str) -> bytes:
    resource = {"service.name": service, "service.instance.id": instance, "agent.type": "connector"}
    return counter_request(resource_attributes=resource).SerializeToString()


def agents_of(gw: RunningGateway) -> dict[tuple[str, str], str]:
    fleet = gw.gateway.fleet
    document = fleet_document(fleet, {"acme", "globex"}, fleet.clock(), admin=True)
    return {
        (tenant["tenant_id"], row["instance"]): row["status"]
        for tenant in document["tenants"]
        for row in tenant["agents"]
    }


def test_both_show_the_same_fleet_a_forget_on_one_is_seen_on_the_other(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async def scenario() -> None:
        async with two_gateways(tmp_path, redis_server.url) as (one, two, keys):
            await one.export(agent("billing", "c-1"), keys["acme"])
            await two.export(agent("billing", "c-2"), keys["acme"])
            await two.export(agent("ledger", "c-3"), keys["globex"])
            await exchange(one, two)
            expected = {("acme", "c-1"): "up", ("acme", "c-2"): "up", ("globex", "c-3"): "up"}
            assert agents_of(one) == agents_of(two) == expected
            # Both show one table: their counts carry the same `fleet` label.
            assert one.gateway.fleet.scope == two.gateway.fleet.scope
            # Each agent's last-seen series go out from one process: the one that heard it.
            for gw, mine in ((one, {"c-1"}), (two, {"c-2", "c-3"})):
                owned = {r.instance for r in gw.gateway.fleet.rows() if store(gw).owns(r)}
                assert owned == mine

            one.gateway.fleet.forget("acme", ["c-2"])
            await exchange(one, two)
            assert agents_of(two)[("acme", "c-2")] == "retired"
            assert agents_of(one) == agents_of(two)

            # An export puts it back, on both.
            await two.export(agent("billing", "c-2"), keys["acme"])
            await exchange(two, one)
            assert agents_of(one)[("acme", "c-2")] == agents_of(two)[("acme", "c-2")] == "up"

    asyncio.run(scenario())


def test_a_row_stored_as_sent_is_not_read_back_one_another_process_added_to_is(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Reading back and decoding each row a process had just sent was most of the
    exchange's CPU with 1,000 agents: a row the store holds as it was sent stays
    unread by its sender; a row the store merged with another process's copy is read."""

    async def scenario() -> None:
        async with two_gateways(tmp_path, redis_server.url) as (one, two, keys):
            await one.export(agent("billing", "c-1"), keys["acme"])
            await exchange(one, two)
            read: dict[str, list[str]] = {"one": [], "two": []}
            for name, gw in (("one", one), ("two", two)):
                fleet = gw.gateway.fleet

                def spy(
                    rows: Iterable[Sighting], merge: Any = fleet.merge, name: str = name
                ) -> None:
                    rows = list(rows)
                    read[name] += [row.instance for row in rows]
                    merge(rows)

                fleet.merge = spy  # type: ignore[method-assign]
            await one.export(agent("billing", "c-1"), keys["acme"])
            assert await store(one).exchange_once()
            assert await store(two).exchange_once()
            assert read == {"one": [], "two": ["c-1"]}
            # Heard by both before either exchanged: the store keeps the first sighting
            # of one's copy, so two reads the merged row back.
            await one.export(agent("billing", "c-2"), keys["acme"])
            await two.export(agent("billing", "c-2"), keys["acme"])
            assert await store(one).exchange_once()
            assert await store(two).exchange_once()
            assert read == {"one": [], "two": ["c-1", "c-2"]}
            # (to 0.1 ms: Redis's cjson writes numbers to 14 digits)
            first_seen = [
                {r.instance: r.first_seen for r in gw.gateway.fleet.rows()} for gw in (one, two)
            ]
            assert first_seen[0] == pytest.approx(first_seen[1], abs=1e-4)
            assert await store(one).exchange_once()
            assert read == {"one": ["c-2"], "two": ["c-1", "c-2"]}

    asyncio.run(scenario())


def test_a_row_stored_as_its_writer_sent_it_is_replaced_unread_by_that_writer_only(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Decoding and merging the stored row was most of Redis's CPU per exchanged row:
    a row stored as this process run sent it is replaced by its next row unread; one
    another writer stored (another process, or this replica's name restarted with
    another table) is merged."""

    async def scenario() -> None:
        async with two_gateways(tmp_path, redis_server.url) as (one, _two, keys):
            client, field = store(one).client, json.dumps(["acme", "billing", "c-1"])

            async def stored_first_seen() -> float:
                return float(json.loads(await client.hget("otelgw:fleet", field))["first_seen"])

            async def backdate_stored_row(writer: str | None) -> None:
                row = json.loads(await client.hget("otelgw:fleet", field))
                row["first_seen"] = 1.0
                await client.hset("otelgw:fleet", field, json.dumps(row))
                if writer is not None:  # None: as its writer noted it
                    await client.hset("otelgw:fleet:writer", field, writer)

            await one.export(agent("billing", "c-1"), keys["acme"])
            assert await store(one).exchange_once()
            tag = await client.hget("otelgw:fleet:writer", field)
            assert tag.split()[0] == store(one).writer.encode()
            first_seen = await stored_first_seen()
            assert first_seen > 1.0

            await backdate_stored_row(None)
            await one.export(agent("billing", "c-1"), keys["acme"])
            assert await store(one).exchange_once()
            assert await stored_first_seen() == pytest.approx(first_seen, abs=1e-4)

            await backdate_stored_row("another-run")
            await one.export(agent("billing", "c-1"), keys["acme"])
            assert await store(one).exchange_once()
            assert await stored_first_seen() == 1.0  # merged: the earliest sighting
            assert await client.hget("otelgw:fleet:writer", field) is None

    asyncio.run(scenario())


def test_a_row_an_older_gateway_changed_since_its_writer_sent_it_is_merged_not_replaced(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A gateway of an older version sharing the store (a rolling upgrade) merges rows
    without noting itself in `fleet:writer`, but notes each change in `fleet:changed`
    as every version does: the row it added to (here: a second process sending as the
    agent, what a clash is made of) is merged with its last writer's next row, not
    replaced by it unread, and that writer reads the union back."""

    async def scenario() -> None:
        async with two_gateways(tmp_path, redis_server.url) as (one, two, keys):
            client, field = store(one).client, json.dumps(["acme", "billing", "c-1"])
            await one.export(agent("billing", "c-1"), keys["acme"])
            await exchange(one, two)

            # The older gateway hears it from another host (its MERGE: the merged row,
            # a change number).
            row = json.loads(await client.hget("otelgw:fleet", field))
            row["processes"].append(["host-b", "", "", time.time(), time.time()])
            seq = await client.incr("otelgw:fleet:seq")
            await client.hset("otelgw:fleet", field, json.dumps(row))
            await client.zadd("otelgw:fleet:changed", {field: seq})

            def hosts(processes: Iterable[Any]) -> set[str]:
                return {process[0] for process in processes}

            await one.export(agent("billing", "c-1"), keys["acme"])  # before one looks
            await exchange(one, two)
            stored = json.loads(await client.hget("otelgw:fleet", field))
            assert "host-b" in hosts(stored["processes"])
            for gw in (one, two):
                (mine,) = [r for r in gw.gateway.fleet.rows() if r.instance == "c-1"]
                assert "host-b" in hosts(mine.processes)

    asyncio.run(scenario())


async def admitted(gw: RunningGateway, body: bytes, key: str) -> bool:
    try:
        await gw.export(body, key)
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
    else:
        return True
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    return False


def test_a_tenants_rate_is_one_budget_across_both(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """2 requests/s, burst 10: 60 requests over 3 s, half to each gateway, admit
    burst + rate x time (16), not twice that."""

    async def scenario() -> tuple[int, float]:
        limits = {"rate_limit_requests_per_second": 2.0, "rate_limit_burst": 10}
        async with two_gateways(tmp_path, redis_server.url, state_sync_seconds=0.2, **limits) as (
            one,
            two,
            keys,
        ):
            await exchange(one, two, rounds=1)  # both know there are two replicas
            loops = [asyncio.create_task(store(gw).run()) for gw in (one, two)]
            body, count = agent("billing", "c-1"), 0
            started = time.monotonic()
            for i in range(60):
                gw = (one, two)[i % 2]
                count += await admitted(gw, body, keys["acme"])
                await asyncio.sleep(max(0.0, started + (i + 1) * 0.05 - time.monotonic()))
            elapsed = time.monotonic() - started
            for loop in loops:
                loop.cancel()
            return count, elapsed

    count, elapsed = asyncio.run(scenario())
    expected = 10 + 2.0 * elapsed
    assert abs(count - expected) <= 0.1 * expected, (count, elapsed)


def test_active_series_and_the_auth_throttle_count_across_both(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async def scenario() -> None:
        async with two_gateways(
            tmp_path, redis_server.url, max_active_series=10, auth_failure_limit=3
        ) as (one, two, keys):
            await exchange(one, two)
            for i in range(6):
                await one.export(agent("billing", f"a-{i}"), keys["acme"])
            await exchange(one, two)
            refused = 0
            for i in range(6):
                response = await two.export(agent("billing", f"b-{i}"), keys["acme"])
                refused += response.partial_success.rejected_data_points
            assert refused == 2  # 6 + 6 - 10

            for gw in (one, one, two):
                with pytest.raises(grpc.aio.AioRpcError):
                    await gw.export(agent("billing", "x"), "oga_nope_nope")
            await exchange(one, two)
            with pytest.raises(grpc.aio.AioRpcError) as refusal:
                await two.export(agent("billing", "a-0"), "oga_nope_nope")
            assert "too many failed authentications" in str(refusal.value.details())
            # A valid key from that address is still served (a tenant behind the NAT).
            await two.export(agent("billing", "a-0"), keys["acme"])

    asyncio.run(scenario())


def test_series_counts_are_exchanged_every_few_seconds_not_at_every_exchange(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async def scenario() -> None:
        async with two_gateways(
            tmp_path, redis_server.url, counts_seconds=2.0, max_active_series=10
        ) as (one, two, keys):
            await exchange(one, two)
            for i in range(6):
                await one.export(agent("billing", f"a-{i}"), keys["acme"])
            await exchange(one, two)  # within counts_seconds: two knows none of them

            async def refused_on_two(name: str) -> int:
                response = await two.export(agent("billing", name), keys["acme"])
                return int(response.partial_success.rejected_data_points)

            # Counted at every exchange, the fifth would be the eleventh series.
            assert [await refused_on_two(f"b-{i}") for i in range(5)] == [0] * 5
            await asyncio.sleep(2.1)
            await exchange(one, two)  # counts_seconds later: both know all eleven
            assert await refused_on_two("b-5") == 1

    asyncio.run(scenario())


def test_new_series_sent_to_both_before_a_count_pass_the_limit_by_at_most_it_on_each(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """What "The state store" states of a tenant racing the count exchange: new series
    sent to both processes before either counts them are admitted up to the limit on
    each, never more; once counted, no new one is, and those admitted keep being
    admitted while they are sent."""

    async def scenario() -> None:
        async with two_gateways(
            tmp_path, redis_server.url, counts_seconds=3600.0, max_active_series=4
        ) as (one, two, keys):
            await exchange(one, two)  # counted once, then not for an hour

            async def refused(gw: RunningGateway, names: Iterable[str]) -> list[int]:
                answers = [await gw.export(agent("billing", n), keys["acme"]) for n in names]
                return [int(a.partial_success.rejected_data_points) for a in answers]

            first = [f"a-{i}" for i in range(4)]
            second = [f"b-{i}" for i in range(4)]
            assert await refused(one, [*first, "a-4"]) == [0, 0, 0, 0, 1]
            assert await refused(two, [*second, "b-4"]) == [0, 0, 0, 0, 1]
            for gw in (one, two):
                store(gw).counts_seconds = 0.0
            await exchange(one, two)  # both know all eight
            for gw, theirs in ((one, first), (two, second)):
                assert await refused(gw, theirs) == [0] * 4
                assert await refused(gw, ["c-1"]) == [1]

    asyncio.run(scenario())


def test_store_paused_killed_or_emptied_exports_go_on_and_all_comes_back(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async def scenario() -> None:
        limits = {"rate_limit_requests_per_second": 0.001, "rate_limit_burst": 10}
        async with two_gateways(tmp_path, redis_server.url, **limits) as (one, two, keys):
            await one.export(agent("billing", "c-1"), keys["globex"])
            await two.export(agent("billing", "c-2"), keys["globex"])
            await exchange(one, two)
            scope = one.gateway.fleet.scope

            redis_server.pause()
            try:
                started = time.monotonic()
                assert not await store(one).exchange_once()
                assert time.monotonic() - started < 3.0  # bounded by the timeout
                document = store(one).document()
                assert document == {"store": "redis", "up": False, "replicas": 2, "partial": True}
                # Exports go on; the rate falls back to the setting / 2 replicas (burst 5).
                body = agent("billing", "c-1")
                results = [await admitted(one, body, keys["acme"]) for _ in range(8)]
                assert results == [True] * 5 + [False] * 3
            finally:
                redis_server.resume()
            assert await store(one).exchange_once()
            assert store(one).document()["partial"] is False

            # Killed, restarted empty: every process sends its table again.
            redis_server.stop()
            assert not await store(two).exchange_once()
            assert await admitted(two, agent("billing", "c-2"), keys["globex"])
            redis_server.start()
            await exchange(one, two)
            expected = {("globex", "c-1"): "up", ("globex", "c-2"): "up", ("acme", "c-1"): "up"}
            assert agents_of(one) == agents_of(two) == expected
            # An emptied store is a new table, one for both.
            assert scope != one.gateway.fleet.scope == two.gateway.fleet.scope
            # Limits are global again, the view whole.
            for gw in (one, two):
                assert store(gw).rate.connected
                assert store(gw).series.replicas == 0
                assert store(gw).document()["partial"] is False

    asyncio.run(scenario())


def test_rows_forgotten_everywhere_leave_the_store(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async def scenario() -> None:
        async with two_gateways(tmp_path, redis_server.url) as (one, _, keys):
            await one.export(agent("billing", "old"), keys["acme"])
            await exchange(one)
            state = store(one)
            assert await state.client.hlen("otelgw:fleet") == 1
            state.clock = lambda: time.time() + one.gateway.fleet.forget_after + 1
            await state._sweep()
            assert await state.client.hlen("otelgw:fleet") == 0
            assert await state.client.zcard("otelgw:fleet:changed") == 0

    asyncio.run(scenario())


def churn(batch: int, size: int) -> bytes:
    """One request of `size` agents, each under a service.instance.id never seen before."""
    request = ExportMetricsServiceRequest()
    for i in range(size):
        request.resource_metrics.append(
            counter_request(
                resource_attributes={
                    "service.name": "churn",
                    "service.instance.id": f"id-{batch}-{i}",
                    "agent.type": "connector",
                }
            ).resource_metrics[0]
        )
    return request.SerializeToString()


def test_a_tenant_making_up_instance_ids_keeps_the_store_to_its_cap(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """acme sends 200 new ids per request, an exchange after each: the store keeps about
    its cap of rows (it kept all 2,000 before evicted rows were deleted there), and
    globex's row and changes go on."""

    async def scenario() -> None:
        async with two_gateways(tmp_path, redis_server.url, fleet_max_agents_per_tenant=100) as (
            one,
            two,
            keys,
        ):
            await two.export(agent("billing", "g-1"), keys["globex"])
            await exchange(one, two)
            for batch in range(10):
                await one.export(churn(batch, 200), keys["acme"])
                await exchange(one, two, rounds=1)
            await exchange(one, two)
            client = store(one).client
            assert await client.hlen("otelgw:fleet") <= 100 + 1
            assert await client.zcard("otelgw:fleet:changed") <= 100 + 1
            for gw in (one, two):
                acme = [r.instance for r in gw.gateway.fleet.rows() if r.tenant_id == "acme"]
                assert len(acme) == 100
                assert all(i.startswith("id-9-") for i in acme)  # the last request's
            two.gateway.fleet.forget("globex", ["g-1"])
            await exchange(two, one, rounds=1)
            assert agents_of(one)[("globex", "g-1")] == "retired"

    asyncio.run(scenario())


def test_a_value_the_gateway_cannot_read_marks_the_store_down_and_the_exchanges_go_on(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A value the gateway cannot read (another version's, or written by hand) ended
    the exchange task for good, the store still shown up; now that exchange fails like
    an unreachable store's and the next ones go on."""

    async def scenario() -> None:
        async with two_gateways(tmp_path, redis_server.url) as (one, two, keys):
            await one.export(agent("billing", "a-0"), keys["acme"])
            await exchange(one, two)
            state = store(one)
            # A series count that is no HyperLogLog.
            buckets = await state.client.keys("otelgw:series:acme:*")
            assert buckets
            for key in buckets:
                await state.client.set(key, "garbage")
            assert await state.exchange_once() is False
            assert not state.up
            assert not state.rate.connected
            await state.client.delete(*buckets)
            assert await state.exchange_once() is True
            # A fleet row whose times are no numbers is skipped, not merged.
            name = '["acme", "billing", "odd"]'
            row = {"tenant_id": "acme", "agent_type": "connector", "service": "billing"}
            row |= {"instance": "odd", "version": "", "first_seen": 1, "last_seen": "x"}
            await state.client.hset("otelgw:fleet", name, json.dumps(row))
            await state.client.zadd("otelgw:fleet:changed", {name: 1e9})
            assert await state.exchange_once() is True
            assert ("acme", "odd") not in agents_of(one)
            # Nor one whose times are not finite: it could not be sent back (cjson).
            row["last_seen"] = float("inf")
            await state.client.hset("otelgw:fleet", name, json.dumps(row))
            await state.client.zadd("otelgw:fleet:changed", {name: 2e9})
            assert await state.exchange_once() is True
            assert ("acme", "odd") not in agents_of(one)

    asyncio.run(scenario())


def test_a_state_file_row_with_an_infinite_time_does_not_stop_the_exchange(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Redis's cjson cannot write Infinity: loaded as it was, one such row failed the
    merge of every row sent with it at every exchange (another tenant's too), and the
    process stayed cut off from the store."""
    now = time.time()
    row = {"tenant_id": "acme", "agent_type": "connector", "service": "billing"}
    row |= {"instance": "c-1", "version": "", "first_seen": now - 10, "last_seen": now - 5}
    rows = [row | {"clash_seen": float("inf")}, row | {"tenant_id": "globex"}]
    document = {"version": 2, "saved_at": now, "agents": rows}
    (tmp_path / "a.json").write_text(json.dumps(document))

    async def scenario() -> None:
        async with two_gateways(tmp_path, redis_server.url) as (one, two, _):
            assert [await store(one).exchange_once() for _ in range(2)] == [True, True]
            assert await store(two).exchange_once()
            assert agents_of(two) == {("acme", "c-1"): "up", ("globex", "c-1"): "up"}

    asyncio.run(scenario())


def test_a_stored_row_that_cannot_be_merged_is_replaced_and_fails_no_other(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """The merge script failed on a stored row it could not read (no JSON, a field
    missing, a number cjson cannot write), and with it every row of its batch, at
    every exchange: that process's fleet never reached the store again."""

    async def scenario() -> None:
        async with two_gateways(tmp_path, redis_server.url) as (one, two, keys):
            client = store(one).client
            row = {"tenant_id": "acme", "agent_type": "connector", "service": "billing"}
            row |= {"version": "", "first_seen": 1.0, "last_seen": 2.0, "silence_from": 2.0}
            stored = {
                "c-1": "not json",
                "c-2": json.dumps(row | {"instance": "c-2", "first_seen": None}),
                "c-3": json.dumps(row | {"instance": "c-3", "last_seen": 1e400}),
            }
            for instance, raw in stored.items():
                await client.hset("otelgw:fleet", json.dumps(["acme", "billing", instance]), raw)
            for instance in stored:
                await one.export(agent("billing", instance), keys["acme"])
            await one.export(agent("ledger", "g-1"), keys["globex"])
            assert await store(one).exchange_once()
            assert await store(two).exchange_once()
            assert agents_of(two) == {
                ("acme", "c-1"): "up",
                ("acme", "c-2"): "up",
                ("acme", "c-3"): "up",
                ("globex", "g-1"): "up",
            }

    asyncio.run(scenario())


class Recorder:
    """A forwarder that keeps what it is given."""

    def __init__(self) -> None:
        self.requests: list[ExportMetricsServiceRequest] = []

    async def forward(self, request: ExportMetricsServiceRequest) -> None:
        self.requests.append(request)


async def published(gw: RunningGateway) -> list[str]:
    """The agents whose last-seen series this gateway sends, in one round."""
    recorder = Recorder()
    task = asyncio.create_task(
        fleet_series.publish(gw.gateway.fleet, recorder, 60.0, "gw", store(gw).owns)  # type: ignore[arg-type]
    )
    deadline = time.monotonic() + 10
    while not recorder.requests and time.monotonic() < deadline and not task.done():
        await asyncio.sleep(0.01)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return sorted(
        kv.value.string_value
        for request in recorder.requests
        for rm in request.resource_metrics
        for kv in rm.resource.attributes
        if kv.key == "service.instance.id"
    )


def test_each_agents_last_seen_series_are_sent_by_one_gateway_and_taken_over_when_it_goes(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async def scenario() -> None:
        async with two_gateways(tmp_path, redis_server.url) as (one, two, keys):
            await one.export(agent("billing", "c-1"), keys["acme"])
            await two.export(agent("billing", "c-2"), keys["acme"])
            await two.export(agent("billing", "c-3"), keys["acme"])
            await exchange(one, two)
            assert await published(one) == ["c-1"]
            assert await published(two) == ["c-2", "c-3"]
            # One goes away (it leaves the store): two sends for its agent too.
            await store(one).close()
            await exchange(two)
            assert await published(two) == ["c-1", "c-2", "c-3"]

    asyncio.run(scenario())


def many_series(first: int, last: int) -> bytes:
    """One request with a point of each series `first`..`last - 1` of one agent."""
    request = counter_request(resource_attributes={"service.name": "billing"})
    points = request.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points
    template = points[0]
    del points[:]
    for number in range(first, last):
        point = points.add()
        point.CopyFrom(template)
        attribute = point.attributes.add()
        attribute.key, attribute.value.string_value = "table", f"t-{number}"
    return request.SerializeToString()


def test_a_series_sent_through_both_counts_once_within_the_stated_error(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """10,000 series, 5,000 of them through both gateways: the global count is a
    distinct count (HyperLogLog, 0.81 % standard error; a sum over processes said
    15,000)."""

    async def scenario() -> None:
        async with two_gateways(tmp_path, redis_server.url, max_active_series=100_000) as (
            one,
            two,
            keys,
        ):
            for gw, first, last in ((one, 0, 7_500), (two, 2_500, 10_000)):
                for at in range(first, last, 500):
                    response = await gw.export(many_series(at, at + 500), keys["acme"])
                    assert response.partial_success.rejected_data_points == 0
            await exchange(one, two)
            now = time.monotonic()
            local = [gw.gateway.ingestor.series.count("acme", now) for gw in (one, two)]
            assert local == [7_500, 7_500]  # their sum is what each used to see
            for gw in (one, two):
                total = gw.gateway.ingestor.series.total("acme", now)
                assert abs(total - 10_000) <= 200, total

    asyncio.run(scenario())


def test_what_the_share_took_over_an_exchange_is_charged_in_full_beyond_the_burst(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """100 requests/s, burst 20, two replicas: past a short lease each admits 50 in a
    second on its share. Charging at most the burst (20) of it forgave the rest at
    every exchange: a tenant sending through both got 1.4 times its rate."""

    async def scenario() -> float:
        async with two_gateways(tmp_path, redis_server.url) as (one, two, _):
            await exchange(one, two)  # both know there are two replicas
            state = store(one)
            assert state.rate.take("acme", 100.0, 20) is None  # a lease to exchange
            state.rate.leases["acme"].debt = 50
            assert await state.exchange_once()
            tokens = await state.client.hget("otelgw:rate:acme", "tokens")
            assert tokens is not None
            return float(tokens)

    # The burst (20), less the 50 owed (the bucket's floor is minus the burst).
    assert asyncio.run(scenario()) < -19.0


def test_what_the_share_took_while_the_store_was_away_uses_up_the_refill_of_that_time(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """While the store is away each process admits its share, and the global bucket
    refills meanwhile: forgiven whole, the share was followed by a full bucket. A
    store failing every other exchange so let a tenant through at twice its rate."""

    async def scenario() -> float:
        async with two_gateways(tmp_path, redis_server.url) as (one, two, _):
            await exchange(one, two)  # both know there are two replicas
            state = store(one)
            redis_server.pause()
            try:
                assert not await state.exchange_once()
                # 2/s, burst 10: the share is 5 at once.
                taken = [state.rate.take("acme", 2.0, 10) is None for _ in range(7)]
                assert taken == [True] * 5 + [False] * 2
            finally:
                redis_server.resume()
            # The store was away 5 s: its bucket refilled to the burst meanwhile.
            seconds, _ = await state.client.time()
            key = "otelgw:rate:acme"
            await state.client.hset(key, mapping={"tokens": 0, "updated": seconds - 5})
            assert await state.exchange_once()
            tokens = await state.client.hget(key, "tokens")
            assert tokens is not None
            return float(tokens) + state.rate.leases["acme"].pool

    # The refill (10) less the 5 the share took meanwhile, never below empty.
    assert asyncio.run(scenario()) == pytest.approx(5.0, abs=0.5)
