"""Each tenant's usage: the counts (gateway.usage), GET /api/usage, and its sum across
two gateways sharing a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_fixtures import counter_request, exchange, two_gateways
from gateway_http_fixtures import ADMIN_DIGEST, ADMIN_KEY
from middle import Middle, middle

from gateway.http_app import create_app
from gateway.ratelimit import API_READS_BURST
from gateway.usage import HOUR_MINUTES, RATE_WINDOW_SECONDS, Usage
from gateway.usage_api import usage_document
from stack.redis_server import RedisServer

T0 = 1_800_000_000.25
"""A fixed wall-clock time for the usage counts (the middle of a second and a minute)."""


class Clock:
    """A settable clock."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def body(instance: str = "c-1", **point_attributes: str) -> bytes:
    resource = {"service.name": "billing", "service.instance.id": instance}
    return counter_request(
        point_attributes=point_attributes, resource_attributes=resource
    ).SerializeToString()


@contextlib.asynccontextmanager
async def api(m: Middle) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(m.gateway), client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_a_tenant_sees_only_itself_the_admin_every_tenant(tmp_path: Path) -> None:
    m = middle(tmp_path, admin_key_sha256=ADMIN_DIGEST)

    async def scenario() -> None:
        for _ in range(3):
            assert (await m.export(body(), m.keys["acme"])).error is None
        for _ in range(2):
            assert (await m.export(body("g-1"), m.keys["globex"])).error is None
        async with api(m) as client:
            answer = await client.get("/api/usage", headers=bearer(m.keys["globex"]))
            assert answer.status_code == 200
            assert answer.headers["cache-control"] == "no-store"
            assert answer.json()["scope"] == "tenant"
            (globex,) = answer.json()["tenants"]
            assert globex["tenant_id"] == "globex"
            assert globex["last_hour"]["requests"] == 2
            assert "acme" not in answer.text

            (acme,) = (await client.get("/api/usage", headers=bearer(m.keys["acme"]))).json()[
                "tenants"
            ]
            assert (acme["tenant_id"], acme["last_hour"]["requests"]) == ("acme", 3)

            admin = (await client.get("/api/usage", headers=bearer(ADMIN_KEY))).json()
            assert admin["scope"] == "all tenants"
            requests = {t["tenant_id"]: t["last_hour"]["requests"] for t in admin["tenants"]}
            assert requests == {"acme": 3, "globex": 2}

            for headers in ({}, bearer("oga_nope_nope"), {"authorization": "Basic abc"}):
                refused = await client.get("/api/usage", headers=headers)
                assert refused.status_code == 401
                assert refused.json()["error"] == "unauthenticated"

    asyncio.run(scenario())


def test_a_tenant_polling_the_read_apis_is_limited_others_and_the_admin_are_not(
    tmp_path: Path,
) -> None:
    """Each call costs the event loop ~20 ms for a tenant of 1,000 agents: unlimited,
    one key polling in a loop took a gateway process from every other tenant."""
    m = middle(tmp_path, admin_key_sha256=ADMIN_DIGEST)

    async def scenario() -> None:
        async with api(m) as client:
            for path in ("/api/usage", "/api/fleet"):
                answers = [
                    await client.get(path, headers=bearer(m.keys["acme"]))
                    for _ in range(API_READS_BURST + 1)
                ]
                assert [a.status_code for a in answers] == [200] * API_READS_BURST + [429]
                refused = answers[-1]
                assert refused.json()["error"] == "rate_limited"
                assert int(refused.headers["retry-after"]) >= 1
                assert path in refused.json()["message"]
                assert (await client.get(path, headers=bearer(m.keys["globex"]))).status_code == 200
                for _ in range(API_READS_BURST + 1):
                    assert (await client.get(path, headers=bearer(ADMIN_KEY))).status_code == 200

    asyncio.run(scenario())


def test_counts_are_exact_after_accepted_and_refused_requests(tmp_path: Path) -> None:
    """7 accepted, 1 accepted with its point dropped, 3 over the rate; 2 bad keys."""
    m = middle(
        tmp_path,
        admin_key_sha256=ADMIN_DIGEST,
        rate_limit_requests_per_second=0.001,
        rate_limit_burst=8,
    )
    clock = m.gateway.ingestor.usage.clock = Clock()

    async def scenario() -> dict[str, Any]:
        outcomes = [(await m.export(body(), m.keys["acme"])).reason for _ in range(7)]
        outcomes.append((await m.export(body(**{"Bad-Key": "x"}), m.keys["acme"])).reason)
        outcomes += [(await m.export(body(), m.keys["acme"])).reason for _ in range(3)]
        for _ in range(2):
            assert (await m.export(body(), "oga_nope_nope")).reason == "unauthenticated"
        assert outcomes == ["accepted"] * 8 + ["rate_limited"] * 3
        clock.now += 1  # the second they came in is complete
        async with api(m) as client:
            answer = await client.get("/api/usage", headers=bearer(m.keys["acme"]))
        document: dict[str, Any] = answer.json()
        return document

    document = asyncio.run(scenario())
    assert document["rate_window_seconds"] == RATE_WINDOW_SECONDS
    assert document["state_store"] == {
        "store": "memory",
        "up": True,
        "replicas": 1,
        "partial": False,
    }
    (acme,) = document["tenants"]
    assert acme["active_series"] == 1
    assert acme["requests_per_second"] == pytest.approx(11 / RATE_WINDOW_SECONDS)
    assert acme["data_points_per_second"] == pytest.approx(7 / RATE_WINDOW_SECONDS)
    assert acme["limits"] == {
        "max_active_series": 10_000,
        "rate_limit_requests_per_second": 0.001,
        "rate_limit_burst": 8,
        "max_data_points_per_request": 10_000,
    }
    assert acme["last_hour"] == {
        "requests": 11,
        "accepted": 8,
        "refused": 3,
        "data_points": 7,
        "refusals": {"rate_limited": 3, "attribute_key_not_allowed": 1},
        "dropped_data_points": {"attribute_key_not_allowed": 1},
    }
    assert acme["agents"] == {"up": 1, "silent": 0, "stopped": 0, "retired": 0}
    # The same refusals as the gateway's own counter.
    for reason, count in acme["last_hour"]["refusals"].items():
        assert m.sample("gateway_rejections_total", tenant_id="acme", reason=reason) == count


def test_rates_cover_the_window_and_the_hour_ends() -> None:
    clock = Clock()
    usage = Usage(clock)
    for _ in range(20):
        usage.request("acme", None)
    usage.forwarded("acme", 500)
    usage.request("acme", "rate_limited")
    assert usage.of("acme")["requests_per_second"] == 0  # the current second is not complete
    clock.now += 1
    assert usage.of("acme")["requests_per_second"] == pytest.approx(21 / RATE_WINDOW_SECONDS)
    assert usage.of("acme")["data_points_per_second"] == pytest.approx(500 / RATE_WINDOW_SECONDS)
    clock.now += RATE_WINDOW_SECONDS
    assert usage.of("acme")["requests_per_second"] == 0
    assert usage.of("acme")["last_hour"]["refusals"] == {"rate_limited": 1}
    clock.now += (HOUR_MINUTES - 2) * 60
    assert usage.of("acme")["last_hour"]["requests"] == 21
    clock.now += 2 * 60
    assert usage.of("acme")["last_hour"]["requests"] == 0
    assert usage.recent() == usage.completed() == {}  # forgotten: nothing in the last hour
    assert usage.tenants() == set()


def test_other_processes_counts_add_up_a_gone_ones_rates_do_not() -> None:
    clock = Clock()
    here, there = Usage(clock), Usage(clock)
    for usage, n in ((here, 3), (there, 5)):
        for _ in range(n):
            usage.request("acme", None)
        usage.request("acme", "series_limit")
    clock.now += 1
    assert there.completed() == {}  # the minute is still going on
    published = (there.recent(), there.completed())
    here.merge_others([(*published, True)])
    assert here.of("acme")["last_hour"]["requests"] == 10
    assert here.of("acme")["requests_per_second"] == pytest.approx(10 / RATE_WINDOW_SECONDS)
    assert here.of("acme")["last_hour"]["refusals"] == {"series_limit": 2}
    here.merge_others([(*published, False)])  # its process left
    assert here.of("acme")["last_hour"]["requests"] == 10
    assert here.of("acme")["requests_per_second"] == pytest.approx(4 / RATE_WINDOW_SECONDS)
    assert not here.expired(*published)

    # A minute later its minute is complete: counted once, whether the others still
    # have its last `recent()` or already its `completed()`.
    clock.now += 60
    assert list(there.completed()["acme"]) == [str(int(T0 // 60))]
    for recent in (published[0], there.recent()):
        here.merge_others([(recent, there.completed(), True)])
        assert here.of("acme")["last_hour"]["requests"] == 10
    assert here.of("acme")["requests_per_second"] == 0

    # Others' rates older than the window are no rates of the last seconds.
    here.merge_others([(*published, True)])
    assert here.of("acme")["requests_per_second"] == pytest.approx(6 / RATE_WINDOW_SECONDS)
    clock.now += RATE_WINDOW_SECONDS + 1
    assert here.of("acme")["requests_per_second"] == 0

    clock.now += HOUR_MINUTES * 60
    assert here.expired(*published)
    assert here.expired(there.recent(), there.completed())


@pytest.mark.slow
def test_two_gateways_sharing_redis_answer_the_same(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """3 + 1 requests to one, 4 + 1 to the other (one of each with a point dropped)."""
    clock = Clock()

    async def scenario() -> list[dict[str, Any]]:
        async with two_gateways(tmp_path, redis_server.url) as (one, two, keys):
            for gw, sent, instance in ((one, 3, "c-1"), (two, 4, "c-2")):
                gw.gateway.ingestor.usage.clock = clock
                for _ in range(sent):
                    await gw.export(body(instance), keys["acme"])
                await gw.export(body(instance, **{"Bad-Key": "x"}), keys["acme"])
            answers = []
            for step in (1, 60):  # the minute going on, then completed
                clock.now += step
                await exchange(one, two)
                answers += [
                    usage_document(gw.gateway, {"acme", "globex"}, True) for gw in (one, two)
                ]
            return answers

    first, second, later, later_too = asyncio.run(scenario())
    assert first == second
    assert later == later_too
    acme = next(t for t in first["tenants"] if t["tenant_id"] == "acme")
    assert acme["last_hour"] == {
        "requests": 9,
        "accepted": 9,
        "refused": 0,
        "data_points": 7,
        "refusals": {"attribute_key_not_allowed": 2},
        "dropped_data_points": {"attribute_key_not_allowed": 2},
    }
    assert acme["requests_per_second"] == pytest.approx(9 / RATE_WINDOW_SECONDS)
    assert acme["active_series"] == 2  # one per agent, one agent per gateway
    assert acme["agents"] == {"up": 2, "silent": 0, "stopped": 0, "retired": 0}
    assert first["state_store"]["replicas"] == 2
    acme_later = next(t for t in later["tenants"] if t["tenant_id"] == "acme")
    assert acme_later["last_hour"] == acme["last_hour"]
    assert acme_later["requests_per_second"] == 0
