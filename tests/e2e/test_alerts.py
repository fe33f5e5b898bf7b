"""Alerts end to end: the stack's Prometheus evaluates the repo's rules and sends to
an Alertmanager running the repo's alertmanager.yml.

The rule logic itself is unit-tested by promtool (prometheus/tests/); here the
deployed files must load, evaluate against real series without errors, and one
real failure (a tenant's data rejected by the gateway) must reach the right
receiver within the 3-minute target.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from polling import poll

from stack.local import LocalStack, http_get

pytestmark = pytest.mark.e2e

Keys = tuple[Path, dict[str, str]]
RULES_DIR = Path(__file__).resolve().parents[2] / "prometheus" / "rules"
EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
TARGET_SECONDS = 180


def _get_json(url: str) -> Any:
    status, body = http_get(url, timeout=5)
    assert status == 200, f"{url} answered {status}: {body[:300]!r}"
    return json.loads(body)


def test_every_rule_group_loads_and_evaluates_cleanly(stack: LocalStack) -> None:
    expected = {
        group["name"]
        for path in RULES_DIR.glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
    }

    def evaluated() -> list[dict[str, Any]] | None:
        groups = _get_json(f"{stack.prometheus_url}/api/v1/rules")["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        if {group["name"] for group in groups} != expected:
            return None
        if any(rule["health"] == "unknown" for rule in rules):
            return None  # not evaluated yet
        return rules

    rules = poll("every rule group loaded and evaluated", evaluated, timeout=60)
    broken = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not broken


def test_prometheus_sends_alerts_to_the_alertmanager(stack: LocalStack, alertmanager: str) -> None:
    def active() -> list[str]:
        data = _get_json(f"{stack.prometheus_url}/api/v1/alertmanagers")["data"]
        return [am["url"] for am in data["activeAlertmanagers"]]

    urls = poll("Prometheus discovers the Alertmanager", active, timeout=60)
    assert urls == [f"{alertmanager}/api/v2/alerts"]


def test_a_tenant_whose_data_is_rejected_reaches_the_team_within_the_target(
    stack: LocalStack, tenant_keys: Keys, alertmanager: str
) -> None:
    _, keys = tenant_keys
    started = time.monotonic()
    channel = grpc.insecure_channel(stack.gateway_grpc_endpoint.removeprefix("http://"))
    export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
    query = urllib.parse.urlencode({"filter": 'alertname="GatewayRejectingTenantData"'})

    def rejected_and_alerted() -> list[dict[str, Any]]:
        # One malformed export per round: each is a rejection of acme's data.
        with pytest.raises(grpc.RpcError) as refused:
            export(b"\xff not OTLP", metadata=(("authorization", f"Bearer {keys['acme']}"),))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        alerts: list[dict[str, Any]] = _get_json(f"{alertmanager}/api/v2/alerts?{query}")
        return [a for a in alerts if a["labels"].get("tenant_id") == "acme"]

    try:
        [alert] = poll(
            "GatewayRejectingTenantData for acme in Alertmanager",
            rejected_and_alerted,
            timeout=TARGET_SECONDS,
            every=2.0,
        )
    finally:
        channel.close()
    elapsed = time.monotonic() - started
    assert alert["labels"]["reason"] == "invalid_request"
    assert alert["labels"]["severity"] == "warning"
    assert alert["annotations"]["runbook_url"] == "docs/operations.md#gatewayrejectingtenantdata"
    assert [receiver["name"] for receiver in alert["receivers"]] == ["team"]
    assert alert["status"]["state"] == "active"
    print(f"\nalert in Alertmanager {elapsed:.0f} s after the first rejection")
