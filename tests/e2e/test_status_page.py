"""The fleet status page in a real headless Chromium, fed by a gateway process.

The gateway runs as a process (`LocalStack.start_gateway`) forwarding to a fake
Collector in this process. Agents report over OTLP/HTTP, the legacy endpoint and
OTLP/gRPC; one agent comes from the fleet state file, last seen an hour ago, as
if it had died before a gateway restart.

The page asks for a key and keeps it in sessionStorage, which Chromium's command
line cannot fill. A small same-origin proxy in this process serves one extra
page that stores the key and opens /status; every other path goes to the
gateway unchanged. The key never appears in a URL.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as service_grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Gauge, Metric, NumberDataPoint
from otlp_receiver import otlp_receiver

from gateway import tenants
from stack.local import REPO, LocalStack, Ports, Process, free_port

pytestmark = pytest.mark.e2e

ARTIFACTS = REPO / "test-artifacts"
ADMIN_KEY = "status-page-e2e-admin-key"
KEY_ITEM = re.search(  # the page's sessionStorage item, read from its script
    r'KEY_ITEM = "([^"]+)"', (REPO / "gateway" / "fleet" / "static" / "status.js").read_text()
)


@pytest.fixture
def collector_port() -> Iterator[int]:
    """A fake Collector on a free port, for the length of one test."""
    with otlp_receiver() as (_, endpoint):
        yield int(endpoint.rsplit(":", 1)[1])


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


@dataclass
class Fleet:
    """A running gateway and what is needed to talk to it."""

    stack: LocalStack
    process: Process
    keys: dict[str, str]
    state_file: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The gateway's HTTP base URL."""
        return self.stack.gateway_http_url

    def fleet(self, key: str) -> dict[str, Any]:
        """GET /api/fleet with `key`."""
        answer = httpx.get(f"{self.url}/api/fleet", headers={"authorization": f"Bearer {key}"})
        answer.raise_for_status()
        document: dict[str, Any] = answer.json()
        return document


def _start(tmp_path: Path, collector: int, state_file: Path, keys_file: Path) -> Fleet:
    stack = LocalStack(
        tmp_path / "run", tenants_file=keys_file, ports=Ports(collector_otlp=collector)
    )
    env = {
        "GATEWAY_FLEET_STATE_FILE": str(state_file),
        "GATEWAY_ADMIN_KEY_SHA256": hashlib.sha256(ADMIN_KEY.encode()).hexdigest(),
    }
    process = stack.start_gateway(extra_env=env)
    stack.wait_ready(process, timeout=30)
    return Fleet(stack, process, {}, state_file, env)


@pytest.fixture
def gateway(tmp_path: Path, collector_port: int) -> Iterator[Fleet]:
    """A gateway process with tenants acme and globex and a seeded fleet state file."""
    keys_file = tmp_path / "tenants.json"
    table = tenants.TenantTable()
    keys = {}
    for name in ("acme", "globex"):
        table, keys[name] = tenants.add_key(table, name)
    tenants.save(keys_file, table)
    state_file = tmp_path / "state" / "fleet-state.json"
    state_file.parent.mkdir()
    an_hour_ago = time.time() - 3600
    dead = {
        "tenant_id": "globex",
        "agent_type": "etl",
        "service": "legacy-etl",
        "instance": "night-runner",
        "version": "0.9.0",
        "first_seen": an_hour_ago - 86400,
        "last_seen": an_hour_ago,
    }
    stopped = {
        **dead,
        "tenant_id": "acme",
        "service": "cron-etl",
        "instance": "cron-1",
        "host": "batch-3",
        "state": "stopped",
    }
    state_file.write_text(json.dumps({"version": 2, "agents": [dead, stopped]}))
    fleet = _start(tmp_path, collector_port, state_file, keys_file)
    fleet.keys = keys
    try:
        yield fleet
    finally:
        fleet.stack.stop_all()


def _resource_request(attributes: dict[str, str]) -> ExportMetricsServiceRequest:
    point = NumberDataPoint(as_int=1)
    metric = Metric(name="connector.connected", gauge=Gauge(data_points=[point]))
    request = ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    resource_metrics.resource.attributes.extend(
        KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in attributes.items()
    )
    resource_metrics.scope_metrics.add().metrics.append(metric)
    return request


def _feed_agents(fleet: Fleet) -> None:
    """One agent per transport: OTLP/HTTP, legacy JSON, OTLP/gRPC."""
    acme, globex = fleet.keys["acme"], fleet.keys["globex"]
    http_agent = _resource_request(
        {
            "service.name": "billing-connector",
            "service.instance.id": "billing-7f3a",
            "agent.type": "connector",
            "service.version": "2.4.1",
        }
    )
    answer = httpx.post(
        f"{fleet.url}/v1/metrics",
        content=http_agent.SerializeToString(),
        headers={"content-type": "application/x-protobuf", "authorization": f"Bearer {acme}"},
    )
    assert answer.status_code == 200, answer.text
    legacy = httpx.post(
        f"{fleet.url}/api/metrics/agent/acme",
        json={
            "agent_type": "etl",
            "agent_id": "etl-runner-1",
            "version": "1.8.0",
            "connected": True,
        },
        headers={"authorization": f"Bearer {acme}"},
    )
    assert legacy.status_code == 200, legacy.text
    grpc_agent = _resource_request(
        {
            "service.name": "crm-connector",
            "service.instance.id": "crm-01",
            "agent.type": "connector",
            "service.version": "3.0.0-rc1",
        }
    )
    # Past its SDK's cardinality limit: the overflow series makes it "over budget".
    overflow = KeyValue(key="otel.metric.overflow", value=AnyValue(bool_value=True))
    points = [NumberDataPoint(as_int=5), NumberDataPoint(as_int=7, attributes=[overflow])]
    grpc_agent.resource_metrics[0].scope_metrics[0].metrics.append(
        Metric(name="crm.queries", gauge=Gauge(data_points=points))
    )
    with grpc.insecure_channel(f"127.0.0.1:{fleet.stack.ports.gateway_grpc}") as channel:
        stub = service_grpc.MetricsServiceStub(channel)  # type: ignore[no-untyped-call]
        stub.Export(grpc_agent, metadata=(("authorization", f"Bearer {globex}"),), timeout=10)


class _Harness(BaseHTTPRequestHandler):
    """Same-origin stand-in for the login form: stores the key, then opens /status."""

    gateway_url = ""
    key = ""

    def do_GET(self) -> None:
        if self.path == "/__login":
            script = (
                f"sessionStorage.setItem({json.dumps(KEY_ITEM.group(1) if KEY_ITEM else '')}, "
                f"{json.dumps(self.key)}); location.replace('/status');"
            )
            self._send(200, "text/html", f"<!doctype html><script>{script}</script>".encode())
            return
        headers = {}
        if self.headers.get("authorization"):
            headers["authorization"] = self.headers["authorization"]
        request = urllib.request.Request(self.gateway_url + self.path, headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 (loopback)
                self._send(answer.status, answer.headers["content-type"], answer.read(), answer)
        except urllib.error.HTTPError as exc:
            self._send(exc.code, exc.headers["content-type"] or "text/plain", exc.read(), exc)

    def _send(self, status: int, content_type: str, body: bytes, upstream: object = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        policy = getattr(upstream, "headers", {}).get("content-security-policy")
        if policy:
            self.send_header("Content-Security-Policy", policy)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def harness(gateway: Fleet) -> Iterator[str]:
    """The proxy's base URL; its /__login page logs in with the admin key."""
    handler = type("Harness", (_Harness,), {"gateway_url": gateway.url, "key": ADMIN_KEY})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _browse(tmp_path: Path, url: str, *extra: str) -> str:
    """Run headless Chromium on `url` until its scripts settle; its stdout."""
    profile = tmp_path / f"chromium-{time.monotonic_ns()}"
    argv = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        *extra,
        url,
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


class _Rows(HTMLParser):
    """Tenant sections and agent rows of the rendered page, as text; and each tenant's
    row of the usage table."""

    def __init__(self) -> None:
        super().__init__()
        self.tenants: list[str] = []
        self.usage: dict[str, dict[str, str]] = {}
        self._usage_tenant = ""
        self._usage_cells: list[str] | None = None
        self.rows: list[dict[str, str]] = []
        self.login_hidden = True
        self._cells: list[str] | None = None
        self._row: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "form" and values.get("id") == "login":
            self.login_hidden = "hidden" in values
        if tag == "section" and values.get("data-tenant"):
            self.tenants.append(values["data-tenant"] or "")
        if tag == "tr" and values.get("data-usage-tenant"):
            self._usage_tenant, self._usage_cells = values["data-usage-tenant"] or "", []
        if tag == "td" and self._usage_cells is not None:
            self._usage_cells.append("")
        if tag == "tr" and values.get("data-status"):
            self._row = {"tenant": self.tenants[-1], "status": values["data-status"] or ""}
            self._cells = []
        if tag == "td" and self._cells is not None:
            self._cells.append("")

    def handle_data(self, data: str) -> None:
        if self._cells:
            self._cells[-1] += data
        if self._usage_cells:
            self._usage_cells[-1] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self._usage_cells is not None:
            names = ("tenant", "series", "requests", "points", "hour", "refusals", "agents")
            self.usage[self._usage_tenant] = dict(zip(names, self._usage_cells, strict=True))
            self._usage_cells = None
        if tag == "tr" and self._cells is not None:
            names = ("badge", "type", "service", "instance", "host", "version", "seen")
            self.rows.append({**self._row, **dict(zip(names, self._cells, strict=True))})
            self._cells = None


def test_the_status_page_shows_every_tenants_agents_in_chromium(
    tmp_path: Path, gateway: Fleet, harness: str
) -> None:
    _feed_agents(gateway)
    assert len(gateway.fleet(ADMIN_KEY)["tenants"]) == 2

    login = _Rows()
    login.feed(_browse(tmp_path, f"{gateway.url}/status", "--dump-dom"))
    assert not login.login_hidden, "without a key the page must ask for one"
    assert login.rows == []

    page = _Rows()
    page.feed(_browse(tmp_path, f"{harness}/__login", "--dump-dom"))
    assert page.login_hidden
    assert page.tenants == ["acme", "globex"]
    rows = {row["instance"]: row for row in page.rows}
    assert set(rows) == {"billing-7f3a", "etl-runner-1", "crm-01", "night-runner", "cron-1"}
    expected = {
        "cron-1": ("acme", "stopped", "⚪", "etl", "cron-etl", "0.9.0"),
        "billing-7f3a": ("acme", "up", "🟢", "connector", "billing-connector", "2.4.1"),
        "etl-runner-1": ("acme", "up", "🟢", "etl", "legacy-etl", "1.8.0"),
        "crm-01": ("globex", "up", "🟢", "connector", "crm-connector", "3.0.0-rc1"),
        "night-runner": ("globex", "silent", "🔴", "etl", "legacy-etl", "0.9.0"),
    }
    for instance, (tenant, status, badge, kind, service, version) in expected.items():
        row = rows[instance]
        assert (row["tenant"], row["status"], row["type"], row["service"], row["version"]) == (
            tenant,
            status,
            kind,
            service,
            version,
        )
        assert row["badge"].startswith(badge)
    assert rows["night-runner"]["seen"] == "60 min ago"
    assert (rows["cron-1"]["host"], rows["night-runner"]["host"]) == ("batch-3", "—")
    assert rows["crm-01"]["seen"].endswith("s ago")
    assert rows["crm-01"]["badge"].endswith("⚠ over budget: crm.queries")
    assert [i for i, row in rows.items() if "over budget" in row["badge"]] == ["crm-01"]
    # Usage (/api/usage): acme sent over OTLP/HTTP and the legacy endpoint, globex over gRPC.
    assert list(page.usage) == ["acme", "globex"]
    acme_usage, globex_usage = page.usage["acme"], page.usage["globex"]
    assert acme_usage["hour"] == "2 requests, 0 refused, 2 data points"
    assert acme_usage["series"] == "2 of 10000"
    assert acme_usage["agents"] == "2 up, 0 silent, 1 stopped, 0 retired"
    assert globex_usage["agents"] == "1 up, 1 silent, 0 stopped, 0 retired"
    assert globex_usage["refusals"] == "none"

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "status-page.png"
    screenshot.unlink(missing_ok=True)
    _browse(
        tmp_path,
        f"{harness}/__login",
        f"--screenshot={screenshot}",
        "--window-size=1280,720",
        "--hide-scrollbars",
    )
    assert screenshot.stat().st_size > 10_000


def test_an_agent_seen_before_a_restart_is_still_listed_after_it(
    tmp_path: Path, gateway: Fleet, collector_port: int
) -> None:
    _feed_agents(gateway)
    gateway.stack.stop(gateway.process)  # SIGTERM: the table is saved on the way out
    saved = json.loads(gateway.state_file.read_text())
    assert {row["instance"] for row in saved["agents"]} >= {"billing-7f3a", "crm-01"}

    restarted = _start(
        tmp_path / "again", collector_port, gateway.state_file, gateway.stack.tenants_file
    )
    try:
        document = restarted.fleet(gateway.keys["acme"])
        (acme,) = document["tenants"]
        # Up before the restart: silence counts again from the restart, no page for them.
        assert {agent["instance"]: agent["status"] for agent in acme["agents"]} == {
            "billing-7f3a": "up",
            "etl-runner-1": "up",
            "cron-1": "stopped",
        }
    finally:
        restarted.stack.stop_all()
