"""`otel-gateway agents list|forget` against a running gateway's admin API."""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import pytest
from gateway_fixtures import EXPORT, counter_request
from live_gateway import LiveGateway, live_gateway

from gateway import cli

ADMIN_KEY = "agents-cli-admin-key"


def _export(gateway: LiveGateway, tenant: str, service: str, instance: str) -> None:
    request = counter_request(
        resource_attributes={
            "service.name": service,
            "service.instance.id": instance,
            "agent.type": "connector",
            "host.name": "db-7",
        }
    )
    with grpc.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        export(
            request.SerializeToString(),
            metadata=(("authorization", f"Bearer {gateway.keys[tenant]}"),),
            timeout=10,
        )


def _run(
    capsys: pytest.CaptureFixture[str], gateway: LiveGateway, *argv: str
) -> tuple[int, str, str]:
    status = cli.main(["agents", *argv, "--url", gateway.http_base])
    out, err = capsys.readouterr()
    return status, out, err


def test_list_and_forget_through_the_admin_api(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()
    with live_gateway(tmp_path, admin_key_sha256=digest) as gateway:
        _export(gateway, "acme", "billing", "7f3a9c2e-one")
        _export(gateway, "acme", "billing", "8b00-two")
        _export(gateway, "globex", "crm", "c-1")
        monkeypatch.setenv("OTEL_GATEWAY_ADMIN_KEY", ADMIN_KEY)

        status, out, _ = _run(capsys, gateway, "list")
        assert status == 0
        header, *rows = out.splitlines()
        assert header.split() == [
            "TENANT", "TYPE", "STATUS", "SERVICE", "INSTANCE", "HOST", "CLASH", "VERSION", "LAST",
            "SEEN", "OVER", "BUDGET",
        ]  # fmt: skip
        assert sorted(row.split()[:6] for row in rows) == [
            ["acme", "connector", "up", "billing", "7f3a9c2e-one", "db-7"],
            ["acme", "connector", "up", "billing", "8b00-two", "db-7"],
            ["globex", "connector", "up", "crm", "c-1", "db-7"],
        ]

        status, out, _ = _run(capsys, gateway, "forget", "acme", "7f3a")
        assert (status, out.strip()) == (0, "retired acme connector billing 7f3a9c2e-one")
        status, out, _ = _run(capsys, gateway, "list", "--tenant", "acme", "--status", "retired")
        assert [row.split()[4] for row in out.splitlines()[1:]] == ["7f3a9c2e-one"]

        status, _, err = _run(capsys, gateway, "forget", "acme", "nope")
        assert status == 1
        assert "404" in err
        assert "no agent 'nope'" in err

        monkeypatch.setenv("OTEL_GATEWAY_ADMIN_KEY", gateway.keys["acme"])  # an agent's key
        status, _, err = _run(capsys, gateway, "forget", "acme", "8b00")
        assert status == 1
        assert "403" in err
        assert "GATEWAY_ADMIN_KEY_SHA256" in err

        monkeypatch.delenv("OTEL_GATEWAY_ADMIN_KEY")
        status, _, err = _run(capsys, gateway, "list")
        assert (status, err.strip()) == (
            1,
            "otel-gateway agents: no key: set OTEL_GATEWAY_ADMIN_KEY to an admin key, "
            "or pass --key-file",
        )


def test_an_unreachable_gateway_says_which_url(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_GATEWAY_ADMIN_KEY", ADMIN_KEY)
    status = cli.main(["agents", "list", "--url", "http://127.0.0.1:9"])
    assert status == 1
    assert "cannot reach the gateway at http://127.0.0.1:9" in capsys.readouterr().err
