"""The demo fleet against the real stack: every dashboard panel has data, and a
killed connector's silence reaches Alertmanager within the 3-minute target.

One fixture runs what `make demo` runs (scripts/demo.py): the demo upstream, a
demo connector and a demo data agent per tenant, a Prefect server. It also
produces what the demo does not, so that every panel can show something: one
tenant's connector reports a certificate that expires in 5 days, and a
misbehaving client keeps sending the gateway a data point with a reserved
attribute key (a tenant's data rejected) and a request with a wrong key (an
authentication failure).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from dashboard_queries import dashboards, panels_of, prometheus_api, run_panel_query, substitute
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    Gauge,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
)
from polling import poll

from scripts.demo import wait_for_port
from scripts.demo_connector import CERT_ENV, make_certificate
from scripts.demo_upstream import ADDRESS_ENV
from stack.local import (
    LocalStack,
    Process,
    free_port,
    http_get,
)
from stack.prefect_server import client_env, start_prefect_server

pytestmark = pytest.mark.e2e

Keys = tuple[Path, dict[str, str]]
EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
KILLED_TENANT = "acme"  # its connector is killed by the silence test
EXPIRING_TENANT = "globex"  # its connector's certificate expires in CERT_DAYS
CERT_DAYS = 5
# Panels have data once each agent exported twice (every 5 s), Prometheus scraped
# that twice (every 10 s) and the rules ran (every 10 s); the Prefect server and
# the first flows take the longest.
DATA_DEADLINE_SECONDS = 180
TARGET_SECONDS = 180  # an alert reaches Alertmanager within 3 minutes of the cause
MISBEHAVE_EVERY_SECONDS = 5.0


def connector_service(tenant: str) -> str:
    """The service.name of a tenant's demo connector (as scripts/demo.py names it)."""
    return f"demo-connector-{tenant}"


@dataclass
class Fleet:
    """The demo processes of the fixture, and when they started."""

    connectors: dict[str, Process]
    started: float  # time.monotonic()

    @property
    def data_deadline(self) -> float:
        """time.monotonic() by which every panel must have data."""
        return self.started + DATA_DEADLINE_SECONDS


def _agent_env(stack: LocalStack, key: str, service: str) -> dict[str, str]:
    """The environment scripts/demo.py gives every demo agent."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": stack.gateway_grpc_endpoint,
        "OTEL_AGENTS_API_KEY": key,
        "OTEL_METRIC_EXPORT_INTERVAL": "5000",
        "OTEL_SERVICE_NAME": service,
    }


def _rejected_request() -> bytes:
    """An export whose only data point has the reserved attribute key `job`."""
    point = NumberDataPoint(
        attributes=[KeyValue(key="job", value=AnyValue(string_value="impostor"))],
        time_unix_nano=time.time_ns(),
        as_double=1.0,
    )
    metric = Metric(name="fleet_test_misbehaving", gauge=Gauge(data_points=[point]))
    request = ExportMetricsServiceRequest(
        resource_metrics=[ResourceMetrics(scope_metrics=[ScopeMetrics(metrics=[metric])])]
    )
    return request.SerializeToString()


def _misbehave(endpoint: str, key: str, stop: threading.Event) -> None:
    """Until `stop`: a rejected data point of `key`'s tenant and a request with a wrong key."""
    with grpc.insecure_channel(endpoint.removeprefix("http://")) as channel:
        export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        while not stop.is_set():
            # Point rejections are a partial success (OK); a wrong key is UNAUTHENTICATED.
            # The panels tell whether they arrived: a failure here must not end the loop.
            with contextlib.suppress(grpc.RpcError):
                export(
                    _rejected_request(), metadata=(("authorization", f"Bearer {key}"),), timeout=5
                )
            with contextlib.suppress(grpc.RpcError):
                export(b"", metadata=(("authorization", "Bearer not-a-key"),), timeout=5)
            stop.wait(MISBEHAVE_EVERY_SECONDS)


@pytest.fixture(scope="module")
def fleet(
    stack: LocalStack, tenant_keys: Keys, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    """The demo's agents for both tenants, as scripts/demo.py starts them, on free ports."""
    _, keys = tenant_keys
    started = time.monotonic()
    processes: list[Process] = []
    stop = threading.Event()
    misbehaving = threading.Thread(
        target=_misbehave,
        args=(stack.gateway_grpc_endpoint, keys[KILLED_TENANT], stop),
        name="misbehaving-client",
        daemon=True,
    )
    try:
        # scripts.demo.start_connectors would use the fixed port of `make demo`.
        upstream_port = free_port()
        upstream_address = f"127.0.0.1:{upstream_port}"
        processes.append(
            stack.start_process(
                "fleet-upstream",
                [sys.executable, "-m", "scripts.demo_upstream"],
                {ADDRESS_ENV: upstream_address},
            )
        )
        wait_for_port(upstream_port)
        certificate = make_certificate(tmp_path_factory.mktemp("certificate"), days=CERT_DAYS)
        connectors = {}
        for tenant, key in keys.items():
            env = {
                **_agent_env(stack, key, connector_service(tenant)),
                ADDRESS_ENV: upstream_address,
            }
            if tenant == EXPIRING_TENANT:
                env[CERT_ENV] = str(certificate)
            connectors[tenant] = stack.start_process(
                f"fleet-connector-{tenant}", [sys.executable, "-m", "scripts.demo_connector"], env
            )
            processes.append(connectors[tenant])

        server = start_prefect_server(stack, 0)
        processes.append(server)
        stack.wait_ready(server, timeout=120)
        for tenant, key in keys.items():
            env = {
                **_agent_env(stack, key, f"demo-data-agent-{tenant}"),
                **client_env(server, str(stack.run_dir / f"fleet-prefect-agent-{tenant}")),
            }
            processes.append(
                stack.start_process(
                    f"fleet-data-agent-{tenant}",
                    [sys.executable, "-m", "scripts.demo_data_agent"],
                    env,
                )
            )
        misbehaving.start()
        yield Fleet(connectors, started)
    finally:
        stop.set()
        if misbehaving.is_alive():
            misbehaving.join(timeout=15)
        for process in reversed(processes):
            stack.stop(process)
        # Ended exactly what it started, and all of it.
        assert all(p.popen.poll() is not None for p in processes)
        assert not misbehaving.is_alive()


def _cases() -> list[Any]:
    return [
        pytest.param(name, panel["title"], query, id=f"{name}:{panel['title']}:{query['refId']}")
        for name, document in dashboards().items()
        for panel in panels_of(document)
        for query in panel.get("targets", [])
    ]


def _live(fleet: Fleet) -> None:
    """Fail when a demo process died: no panel or alert could then be trusted."""
    for tenant, process in fleet.connectors.items():
        assert process.popen.poll() is None, f"connector of {tenant} exited:\n{process.log_tail()}"


@pytest.mark.parametrize(("dashboard", "title", "query"), _cases())
def test_every_panel_has_data_from_the_demo_fleet(
    stack: LocalStack, fleet: Fleet, dashboard: str, title: str, query: dict[str, Any]
) -> None:
    result = run_panel_query(stack, query)
    while not result and time.monotonic() < fleet.data_deadline:
        _live(fleet)
        time.sleep(2)
        result = run_panel_query(stack, query)
    waited = time.monotonic() - fleet.started
    assert result, (
        f"dashboard {dashboard!r}, panel {title!r}: query {query['refId']} stayed empty "
        f"{waited:.0f} s after the demo fleet started: {substitute(query['expr'])}"
    )


def _newest_values(
    stack: LocalStack, dashboard: str, title: str, labels: dict[str, str]
) -> list[float]:
    """The newest value of each series with `labels` of the panel's (only) query."""
    [panel] = [p for p in panels_of(dashboards()[dashboard]) if p["title"] == title]
    [query] = panel["targets"]
    values = []
    for series in run_panel_query(stack, query):
        if labels.items() <= series["metric"].items():
            point = series["value"] if "value" in series else series["values"][-1]
            values.append(float(point[1]))
    return values


def test_the_conditions_the_demo_lacks_show_on_their_panels(
    stack: LocalStack, fleet: Fleet
) -> None:
    """Not only some data: the expiring certificate, the rejection and the bad key."""
    expected: dict[tuple[str, str], tuple[dict[str, str], Callable[[float], bool]]] = {
        ("agents-overview", "Certificate expiry"): (
            {"tenant_id": EXPIRING_TENANT, "service": connector_service(EXPIRING_TENANT)},
            lambda days: CERT_DAYS - 1 < days <= CERT_DAYS,
        ),
        ("gateway", "Rejections by reason"): (
            {"tenant_id": KILLED_TENANT, "reason": "attribute_key_not_allowed"},
            lambda rate: rate > 0,
        ),
        ("gateway", "Authentication failures"): ({"transport": "grpc"}, lambda rate: rate > 0),
    }
    for (dashboard, title), (labels, holds) in expected.items():
        values = _newest_values(stack, dashboard, title, labels)
        while not any(holds(value) for value in values):
            if time.monotonic() > fleet.data_deadline:
                pytest.fail(f"{dashboard}: panel {title!r} shows {values} for {labels}")
            time.sleep(2)
            values = _newest_values(stack, dashboard, title, labels)


def test_every_tenant_is_a_value_of_each_dashboard_variable(
    stack: LocalStack, fleet: Fleet, tenant_keys: Keys
) -> None:
    _, keys = tenant_keys
    for name, document in dashboards().items():
        for variable in document["templating"]["list"]:
            metric, _, label = (
                variable["query"]["query"].removeprefix("label_values(").rstrip(")").partition(", ")
            )
            values: set[str] = set()
            while not values >= set(keys) and time.monotonic() < fleet.data_deadline:
                values = set(
                    prometheus_api(stack, f"/api/v1/label/{label}/values", **{"match[]": metric})
                )
                time.sleep(1)
            assert values >= set(keys), f"{name}: ${variable['name']} offers only {values}"


def _get_json(url: str) -> Any:
    status, body = http_get(url, timeout=5)
    assert status == 200, f"{url} answered {status}: {body[:300]!r}"
    return json.loads(body)


def _last_seen(stack: LocalStack, tenant: str, key: str) -> float:
    """When the gateway last heard from `tenant`'s connector (its /api/fleet)."""
    answer = httpx.get(
        f"{stack.gateway_http_url}/api/fleet", headers={"authorization": f"Bearer {key}"}
    )
    answer.raise_for_status()
    seen = [
        datetime.datetime.fromisoformat(agent["last_seen"]).timestamp()
        for document in answer.json()["tenants"]
        if document["tenant_id"] == tenant
        for agent in document["agents"]
        if agent["service"] == connector_service(tenant)
    ]
    assert seen, f"the gateway has never seen the connector of {tenant}"
    return max(seen)


def test_a_killed_connector_is_reported_silent_within_the_target(
    stack: LocalStack, fleet: Fleet, alertmanager: str, tenant_keys: Keys
) -> None:
    killed = fleet.connectors[KILLED_TENANT]
    service = connector_service(KILLED_TENANT)
    alive = [t for t in fleet.connectors if t != KILLED_TENANT]
    _live(fleet)
    # It has been reporting: the gateway saw it and the rules know it.
    stack.wait_for(
        f'tenant_service_instance:connector_last_seen_age_seconds{{service="{service}"}} < 30',
        lambda r: len(r) == 1,
    )

    killed.popen.kill()  # SIGKILL: no last export on the way out
    killed.popen.wait()
    killed_at, killed_wall = time.monotonic(), time.time()
    last_export = _last_seen(stack, KILLED_TENANT, tenant_keys[1][KILLED_TENANT])
    assert killed_wall - last_export < 15, "the connector was not exporting before the kill"
    deadline = killed_at + TARGET_SECONDS - (killed_wall - last_export)

    def firing() -> list[dict[str, Any]]:
        alerts = _get_json(f"{stack.prometheus_url}/api/v1/alerts")["data"]["alerts"]
        silent = [a for a in alerts if a["labels"]["alertname"] == "ConnectorSilent"]
        for other in alive:
            # The connector that keeps running must never even be pending.
            assert not [a for a in silent if a["labels"]["service"] == connector_service(other)]
        return [
            a
            for a in silent
            if a["state"] == "firing"
            and a["labels"]["tenant_id"] == KILLED_TENANT
            and a["labels"]["service"] == service
        ]

    [alert] = poll(
        f"ConnectorSilent for {service} firing in Prometheus",
        firing,
        deadline - time.monotonic(),
        every=1.0,
    )
    firing_after = time.monotonic() - killed_at
    assert alert["labels"]["severity"] == "critical"

    query = urllib.parse.urlencode(
        [("filter", 'alertname="ConnectorSilent"'), ("filter", f'service="{service}"')]
    )

    def delivered() -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = _get_json(f"{alertmanager}/api/v2/alerts?{query}")
        return [a for a in alerts if a["labels"].get("tenant_id") == KILLED_TENANT]

    [received] = poll(
        f"ConnectorSilent for {service} in Alertmanager",
        delivered,
        deadline - time.monotonic(),
        every=1.0,
    )
    delivered_after = time.monotonic() - killed_at
    since_last_export = time.time() - last_export
    print(
        f"\nConnectorSilent for {service}: firing in Prometheus {firing_after:.0f} s after "
        f"the kill, in Alertmanager {delivered_after:.0f} s after the kill and "
        f"{since_last_export:.0f} s after its last accepted export "
        "(threshold 120 s, agents export every 5 s, scrape and rule evaluation every 10 s, "
        "Prometheus polled every 1 s)"
    )
    assert [receiver["name"] for receiver in received["receivers"]] == ["oncall"]
    assert received["status"]["state"] == "active"
    assert received["annotations"]["runbook_url"] == "docs/operations.md#connectorsilent"
    assert since_last_export < TARGET_SECONDS
    for other in alive:
        age = stack.query(
            f'tenant_service_instance:connector_last_seen_age_seconds{{service="{connector_service(other)}"}}'
        )
        assert age, f"the connector of {other} is unknown to the rules"
        assert float(age[0]["value"][1]) < 30, f"the connector of {other} is silent: {age}"
