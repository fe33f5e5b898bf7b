"""GET /api/fleet (tenant and admin views) and the /status page's files and headers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from gateway_fixtures import run
from gateway_http_fixtures import ADMIN_DIGEST, ADMIN_KEY, http_gateway

from gateway.auth import ADMIN, Authenticator, Credentials
from gateway.errors import Unauthenticated
from gateway.fleet import STATUSES, Agent
from gateway.settings import GatewaySettings
from gateway.tenants import TenantRegistry


def test_a_tenant_key_lists_only_that_tenants_agents(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with http_gateway(tmp_path) as http:
            fleet = http.gateway.fleet
            now = fleet.clock()
            fleet.see("acme", Agent("connector", "billing", "b-1", "1.0", "db-7", False), now - 5)
            fleet.see("acme", Agent("etl", "nightly", "n-1", "0.3", "", False), now - 600)
            fleet.see("acme", Agent("etl", "cron", "c-1", "0.3", "", True), now - 900)
            fleet.see("globex", Agent("etl", "theirs", "t-1", "9", "", False))
            answer = await http.client.get("/api/fleet", headers=http.auth("acme"))
            assert answer.status_code == 200
            assert answer.headers["cache-control"] == "no-store"
            document = answer.json()
            assert document["scope"] == "tenant"
            assert document["silent_after_seconds"] == 120
            (tenant,) = document["tenants"]
            assert tenant["tenant_id"] == "acme"
            by_instance = {agent["instance"]: agent for agent in tenant["agents"]}
            assert set(by_instance) == {"b-1", "n-1", "c-1"}
            up, silent = by_instance["b-1"], by_instance["n-1"]
            assert (up["status"], up["type"], up["service"], up["version"], up["host"]) == (
                "up",
                "connector",
                "billing",
                "1.0",
                "db-7",
            )
            assert silent["status"] == "silent"
            assert by_instance["c-1"]["status"] == "stopped"
            assert silent["seconds_since"] == pytest.approx(600, abs=2)
            assert silent["last_seen"].endswith("+00:00")

    run(scenario())


def test_an_admin_key_lists_every_tenant_even_without_agents(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with http_gateway(tmp_path) as http:
            http.gateway.fleet.see("globex", Agent("etl", "theirs", "t-1", "9", "", False))
            answer = await http.client.get(
                "/api/fleet", headers={"authorization": f"Bearer {ADMIN_KEY}"}
            )
            assert answer.status_code == 200
            document = answer.json()
            assert document["scope"] == "all tenants"
            tenants = {t["tenant_id"]: t["agents"] for t in document["tenants"]}
            assert tenants["acme"] == []
            assert [a["instance"] for a in tenants["globex"]] == ["t-1"]

    run(scenario())


@pytest.mark.parametrize("authorization", [None, "Bearer oga_nope_nope", "Basic abc"])
def test_no_or_a_wrong_key_is_401(tmp_path: Path, authorization: str | None) -> None:
    async def scenario() -> None:
        async with http_gateway(tmp_path) as http:
            headers = {"authorization": authorization} if authorization else {}
            answer = await http.client.get("/api/fleet", headers=headers)
            assert answer.status_code == 401
            assert answer.headers["www-authenticate"] == "Bearer"
            assert answer.json()["error"] == "unauthenticated"

    run(scenario())


def test_an_admin_key_retires_agents_at_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with http_gateway(tmp_path) as http:
            fleet = http.gateway.fleet
            for instance in ("7f3a-one", "7f3b-two"):
                fleet.see("acme", Agent("connector", "billing", instance, "1", "h", False))
            admin = {"authorization": f"Bearer {ADMIN_KEY}"}

            async def forget(body: object, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
                answer = await http.client.post("/api/fleet/forget", json=body, headers=headers)
                return answer.status_code, answer.json()

            status, body = await forget({"tenant_id": "acme", "instances": ["7f3a"]}, admin)
            assert status == 200, body
            assert [(a["instance"], a["status"]) for a in body["retired"]] == [
                ("7f3a-one", "retired")
            ]
            assert {r.instance: r.state for r in fleet.sightings()} == {
                "7f3a-one": "retired",
                "7f3b-two": "running",
            }
            # Saved at once: a gateway restart keeps it retired.
            assert "retired" in fleet.state_file.read_text()
            assert (await forget({"tenant_id": "acme", "instances": ["7f3"]}, admin))[0] == 409
            status, body = await forget({"tenant_id": "acme", "instances": ["nope"]}, admin)
            assert (status, body["error"]) == (404, "unknown_agent")
            status, body = await forget({"tenant_id": "acme"}, admin)
            assert (status, body["error"]) == (400, "invalid_request")
            assert "instances" in body["message"]
            # A tenant's key (an agent's credential) cannot retire anything.
            status, body = await forget(
                {"tenant_id": "acme", "instances": ["7f3b"]}, http.auth("acme")
            )
            assert (status, body["error"]) == (403, "forbidden")
            assert "GATEWAY_ADMIN_KEY_SHA256" in body["message"]
            assert (await forget({"tenant_id": "acme", "instances": ["7f3b"]}, {}))[0] == 401
            assert fleet.sightings()[1].state == "running"

    run(scenario())


def test_admin_keys_are_checked_by_digest_only(tmp_path: Path) -> None:
    settings = GatewaySettings(admin_key_sha256=f"{'a' * 64}, {ADMIN_DIGEST.upper()}")
    assert settings.admin_key_digests == ("a" * 64, ADMIN_DIGEST)
    registry = TenantRegistry(tmp_path / "tenants.json")
    admins = Authenticator(registry, admin_digests=settings.admin_key_digests)
    assert admins.authenticate(Credentials(f"Bearer {ADMIN_KEY}")) is ADMIN
    # The digest itself is not a key; without digests no key is an admin's.
    for authenticator, key in ((admins, "a" * 64), (Authenticator(registry), ADMIN_KEY)):
        with pytest.raises(Unauthenticated):
            authenticator.authenticate(Credentials(f"Bearer {key}"))
    with pytest.raises(ValueError, match="digests of admin keys"):
        GatewaySettings(admin_key_sha256="my-plain-admin-key")


def test_an_admin_key_sends_no_data(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with http_gateway(tmp_path) as http:
            answer = await http.client.post(
                "/v1/metrics",
                content=b"",
                headers={
                    "content-type": "application/x-protobuf",
                    "authorization": f"Bearer {ADMIN_KEY}",
                },
            )
            assert answer.status_code == 401
            assert "admin key cannot send data" in answer.text
            assert http.collector.received == []

    run(scenario())


def test_the_status_page_is_served_with_a_strict_policy(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with http_gateway(tmp_path) as http:
            page = await http.client.get("/status")
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            policy = page.headers["content-security-policy"]
            assert "script-src 'self'" in policy
            assert "frame-ancestors 'none'" in policy
            assert 'src="/status/status.js"' in page.text
            script = await http.client.get("/status/status.js")
            assert script.headers["content-type"].startswith("text/javascript")
            assert "sessionStorage" in script.text
            assert "innerHTML" not in script.text
            assert (await http.client.get("/status/status.css")).status_code == 200
            assert (await http.client.get("/status/status.html")).status_code == 404
            assert (await http.client.get("/status/..%2Fapp.py")).status_code == 404

    run(scenario())


def test_the_status_pages_legend_names_every_state_it_shows(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with http_gateway(tmp_path) as http:
            footer = (await http.client.get("/status")).text.split("<footer>")[1]
            for status in STATUSES:
                assert f" {status}:" in footer, status

    run(scenario())
