"""The routing recipes of otel-collector/recipes/ (docs/routing.md), each merged with
config.yaml in the real Collector, behind the real gateway, into real stores.

    agents ─▶ gateway ─▶ Collector(s) + recipe ─┬▶ shared Prometheus
                                                 └▶ the recipe's store

Every test checks totals exactly, that a tenant routed away never shows in the shared
Prometheus, and that every series of an agent carries that agent's own `tenant_id`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fault_fixtures import CountingAgent, gateway_requests, outcome_total
from gateway_fixtures import make_tenants
from needs import Binaries, require
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from gateway.shards import ShardMap, agent_key
from otel_agents import connector_metrics, setup_metrics
from otel_agents.etl import etl_metrics
from stack.local import (
    RECIPES_DIR,
    LocalStack,
    StackError,
    collector_name,
)
from stack.thanos import start_query, start_receive, thanos_binary

pytestmark = pytest.mark.e2e

TENANTS = ("acme", "globex", "initech")
OWN_TENANTS = ("acme", "initech")
"""Routed to their own store by the tenant-endpoint recipe (a list of two)."""
TENANT_ENDPOINT = "COLLECTOR_TENANT_PROMETHEUS_ENDPOINT"
DATA_AGENTS_ENDPOINT = "COLLECTOR_DATA_AGENTS_PROMETHEUS_ENDPOINT"
GATEWAY_ENV = {
    # The last-seen series are routed like the agents' own: send them often enough
    # to be seen within a test.
    "GATEWAY_FLEET_SERIES_INTERVAL_SECONDS": "2",
    "GATEWAY_RATE_LIMIT_REQUESTS_PER_SECOND": "0",
}
T = TypeVar("T")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A tenants file with one key per tenant, and those keys."""
    path = tmp_path_factory.mktemp("routing-tenants") / "tenants.json"
    return path, make_tenants(path, *TENANTS)


@contextmanager
def routed_stack(
    run_dir: Path,
    binaries: Binaries,
    tenants_file: Path,
    recipes: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    endpoints: Sequence[str] = (),
    collectors: int = 1,
    before_collectors: Callable[[LocalStack], None] | None = None,
) -> Iterator[LocalStack]:
    """Collectors running config.yaml + `recipes`, the gateway and the shared Prometheus.

    `before_collectors` starts what the Collectors send to (a store) and may add to
    their `collector_env`.
    """
    stack = LocalStack(
        run_dir,
        tenants_file=tenants_file,
        collectors=collectors,
        collector_configs=[RECIPES_DIR / f"{name}.yaml" for name in recipes],
        collector_extra_endpoints=endpoints,
        collector_env=dict(env or {}),
    )
    try:
        if before_collectors is not None:
            before_collectors(stack)
        for process in stack.start_collectors(binaries.collector):
            stack.wait_ready(process)
        stack.wait_ready(stack.start_gateway(extra_env=GATEWAY_ENV))
        stack.wait_ready(stack.start_prometheus(binaries.prometheus))
        yield stack
    finally:
        stack.stop_all()


def _agent_environ(stack: LocalStack, instance: str) -> dict[str, str]:
    """An agent that exports when flushed (an hour's interval) as `instance`."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": stack.gateway_grpc_endpoint,
        "OTEL_METRIC_EXPORT_INTERVAL": "3600000",
        "OTEL_RESOURCE_ATTRIBUTES": f"service.instance.id={instance}",
    }


@dataclass(frozen=True)
class Connector:
    """What one connector agent counted, and who it is."""

    tenant: str
    job: str
    instance: str
    rows: int
    nbytes: int
    queries: int = 0
    errors: tuple[str, ...] = ()


def run_connector(stack: LocalStack, key: str, agent: Connector) -> None:
    """Count `agent`'s batches, queries and errors with otel_agents and export them once."""
    telemetry = setup_metrics(
        agent.job,
        "connector",
        api_key=key,
        environ=_agent_environ(stack, agent.instance),
        set_global=False,
    )
    assert telemetry.enabled
    counters = connector_metrics(telemetry)
    counters.record_batch(agent.rows, agent.nbytes)
    for _ in range(agent.queries):
        counters.record_query()
    for error in agent.errors:
        counters.record_error(error)
    assert telemetry.force_flush(timeout_s=20), f"{agent.instance}: the export failed"
    telemetry.shutdown(timeout_s=5)


def run_data_agent(stack: LocalStack, key: str, job: str, instance: str, flows: int) -> None:
    """A data agent that ran `flows` completed flows, exported once."""
    telemetry = setup_metrics(
        job,
        "etl",
        api_key=key,
        environ=_agent_environ(stack, instance),
        set_global=False,
    )
    assert telemetry.enabled
    metrics = etl_metrics(telemetry)
    for _ in range(flows):
        metrics.record_flow_finished("nightly", "completed", 1.5)
    assert telemetry.force_flush(timeout_s=20), f"{instance}: the export failed"
    telemetry.shutdown(timeout_s=5)


def wait(what: str, check: Callable[[], T | None], timeout: float = 45.0) -> T:
    """Poll `check` until it returns something other than None; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found is not None:
            return found
        time.sleep(0.5)
    raise AssertionError(f"after {timeout:.0f} s: {what}")


def by(result: list[dict[str, Any]], *labels: str) -> dict[tuple[str, ...], float]:
    """The values of a vector, keyed by `labels`."""
    return {
        tuple(series["metric"].get(label, "") for label in labels): float(series["value"][1])
        for series in result
    }


def query(stack: LocalStack, promql: str, url: str = "") -> list[dict[str, Any]]:
    return stack.query(promql, prometheus_url=url)


def wait_values(
    stack: LocalStack,
    promql: str,
    expected: dict[tuple[str, ...], float],
    *labels: str,
    url: str = "",
) -> None:
    """Wait until `promql`, by `labels`, is exactly `expected` on the Prometheus at `url`."""
    seen: dict[tuple[str, ...], float] = {}

    def exact() -> bool | None:
        nonlocal seen
        seen = by(query(stack, promql, url), *labels)
        return True if seen == expected else None

    try:
        wait(promql, exact)
    except AssertionError:
        raise AssertionError(f"{promql}: {seen}, expected {expected}") from None


def scraped_since(stack: LocalStack, since: float, url: str = "") -> None:
    """Wait until the Prometheus at `url` has scraped every Collector target after the
    Unix time `since`: what was exported before then is in it, or was never sent."""

    def all_after() -> bool | None:
        started = by(query(stack, 'timestamp(up{job="collector"})', url), "instance")
        return True if started and min(started.values()) > since else None

    wait(f"a scrape of every Collector after {since:.0f}", all_after)


def assert_owned(series: list[dict[str, Any]], owners: Mapping[str, str]) -> None:
    """Every series of the test's agents carries its own agent's tenant_id."""
    assert series, "no series to check"
    wrong = [
        s["metric"]
        for s in series
        if owners.get(s["metric"].get("instance", "")) != s["metric"].get("tenant_id")
    ]
    assert wrong == [], f"series under another tenant's tenant_id: {wrong[:5]}"


def tenants_selector(names: Sequence[str]) -> str:
    return "|".join(names)


def placed(endpoints: str, tenant: str, collector: int) -> str:
    """An instance id that the gateway sends to Collector `collector` of `endpoints`."""
    shards = ShardMap(endpoints.split(","))
    while True:
        instance = uuid.uuid4().hex
        resource = Resource(
            attributes=[
                KeyValue(key=k, value=AnyValue(string_value=v))
                for k, v in (("tenant_id", tenant), ("service.instance.id", instance))
            ]
        )
        if shards.shard_of(agent_key(resource)) == collector:
            return instance


# -- one tenant (or a list) to its own Prometheus ------------------------------------------


def test_listed_tenants_reach_only_their_own_prometheus_from_two_collectors(
    tmp_path: Path, binaries: Binaries, keys: tuple[Path, dict[str, str]]
) -> None:
    tenants_file, key = keys
    run = f"route-{uuid.uuid4().hex[:8]}"
    env = {"ROUTE_OWN_TENANTS": tenants_selector(OWN_TENANTS)}
    with routed_stack(
        tmp_path / "stack",
        binaries,
        tenants_file,
        ["tenant-endpoint"],
        env=env,
        endpoints=[TENANT_ENDPOINT],
        collectors=2,
    ) as stack:
        own, own_url = stack.start_store(binaries.prometheus, "tenant-prometheus", TENANT_ENDPOINT)
        stack.wait_ready(own)
        # Each tenant has an agent on each Collector; the routed ones export first.
        agents = [
            Connector(
                tenant,
                f"{run}-{tenant}",
                placed(stack.collector_endpoints, tenant, c),
                rows=10 + n,
                nbytes=1000 * (c + 1) + n,
            )
            for n, tenant in enumerate((*OWN_TENANTS, "globex"))
            for c in range(2)
        ]
        for agent in agents:
            run_connector(stack, key[agent.tenant], agent)
        exported = time.time()
        owners = {a.instance: a.tenant for a in agents}
        expected = {(a.tenant, a.instance): float(a.nbytes) for a in agents}
        bytes_query = f'connector_bytes_sent_total{{job=~"{run}-.*"}}'

        # The routed tenants in their own Prometheus, from both Collectors.
        wait_values(
            stack,
            bytes_query,
            {k: v for k, v in expected.items() if k[0] in OWN_TENANTS},
            "tenant_id",
            "instance",
            url=own_url,
        )
        from_collectors = {s["metric"]["collector"] for s in query(stack, bytes_query, own_url)}
        assert from_collectors == {collector_name(0), collector_name(1)}
        # The others in the shared one: each scrape that shows them would show the
        # routed tenants too (they were exported before, to the same Collectors).
        wait_values(
            stack,
            bytes_query,
            {k: v for k, v in expected.items() if k[0] == "globex"},
            "tenant_id",
            "instance",
        )
        # The gateway's last-seen series follow their agent's route.
        seen_query = f'connector_last_seen_seconds{{job=~"{run}-.*"}}'
        wait(
            "last-seen series in both stores",
            lambda: (
                True
                if {i for (i,) in by(query(stack, seen_query, own_url), "instance")}
                == {a.instance for a in agents if a.tenant in OWN_TENANTS}
                and {i for (i,) in by(query(stack, seen_query), "instance")}
                == {a.instance for a in agents if a.tenant == "globex"}
                else None
            ),
        )

        routed = tenants_selector(OWN_TENANTS)
        scraped_since(stack, exported)
        scraped_since(stack, exported, own_url)
        assert query(stack, f'{{tenant_id=~"{routed}", collector!=""}}') == []
        assert query(stack, f'{{tenant_id!="", tenant_id!~"{routed}"}}', own_url) == []
        assert_owned(query(stack, f'{{job=~"{run}-.*"}}'), owners)
        assert_owned(query(stack, f'{{job=~"{run}-.*"}}', own_url), owners)


# -- a copy of every tenant to a second store ------------------------------------------------


def test_a_copy_of_every_tenant_is_remote_written_to_thanos_receive(
    tmp_path: Path, binaries: Binaries, keys: tuple[Path, dict[str, str]]
) -> None:
    try:
        thanos = thanos_binary()
    except StackError as exc:
        require("Thanos", exc)
        raise
    tenants_file, key = keys
    run = f"copy-{uuid.uuid4().hex[:8]}"
    stores: list[str] = []

    def receive_first(stack: LocalStack) -> None:
        receive = start_receive(stack, thanos)
        stack.wait_ready(receive.process)
        stores.append(receive.store_address)
        stack.collector_env = {"ROUTE_REMOTE_WRITE_URL": receive.remote_write_url}

    with routed_stack(
        tmp_path / "stack",
        binaries,
        tenants_file,
        ["long-term-copy"],
        before_collectors=receive_first,
    ) as stack:
        thanos_query = start_query(stack, thanos, stores)
        stack.wait_ready(thanos_query.process)
        thanos_query.wait_stores(stores)
        agents = [
            Connector(tenant, f"{run}-{tenant}", uuid.uuid4().hex, 7 + n, 700 + n)
            for n, tenant in enumerate(TENANTS)
        ]
        for agent in agents:
            run_connector(stack, key[agent.tenant], agent)
        expected: dict[tuple[str, ...], float] = {(a.tenant,): float(a.rows) for a in agents}
        records = f'sum by (tenant_id) (connector_records_sent_total{{job=~"{run}-.*"}})'

        seen: dict[tuple[str, ...], float] = {}

        def in_thanos() -> bool | None:
            nonlocal seen
            seen = by(thanos_query.query(records), "tenant_id")
            return True if seen == expected else None

        wait(f"Thanos has {expected} (it has {seen})", in_thanos)
        wait_values(stack, records, expected, "tenant_id")  # and the shared one still
        owners = {a.instance: a.tenant for a in agents}
        assert_owned(thanos_query.query(f'{{job=~"{run}-.*"}}'), owners)


def test_a_copy_of_every_tenant_is_forwarded_to_a_second_collector_tier(
    tmp_path: Path, binaries: Binaries, keys: tuple[Path, dict[str, str]]
) -> None:
    tenants_file, key = keys
    run = f"tier-{uuid.uuid4().hex[:8]}"
    tier = LocalStack(tmp_path / "tier", tenants_file=tenants_file)
    try:
        # The second tier: a Collector with the base configuration and its Prometheus.
        tier.wait_ready(tier.start_collector(binaries.collector))
        tier.wait_ready(tier.start_prometheus(binaries.prometheus))
        env = {"ROUTE_SECOND_TIER_ENDPOINT": f"127.0.0.1:{tier.ports.collector_otlp}"}
        with routed_stack(
            tmp_path / "stack", binaries, tenants_file, ["second-tier-copy"], env=env
        ) as stack:
            agents = [
                Connector(tenant, f"{run}-{tenant}", uuid.uuid4().hex, 3 + n, 300 + n)
                for n, tenant in enumerate(TENANTS)
            ]
            for agent in agents:
                run_connector(stack, key[agent.tenant], agent)
            expected: dict[tuple[str, ...], float] = {
                (a.tenant, a.instance): float(a.nbytes) for a in agents
            }
            bytes_query = f'connector_bytes_sent_total{{job=~"{run}-.*"}}'
            wait_values(tier, bytes_query, expected, "tenant_id", "instance")
            wait_values(stack, bytes_query, expected, "tenant_id", "instance")
            assert_owned(tier.query(f'{{job=~"{run}-.*"}}'), {a.instance: a.tenant for a in agents})
    finally:
        tier.stop_all()


# -- dropping and renaming for one tenant -------------------------------------------------------


def test_one_tenant_loses_a_metric_and_an_attribute_and_gets_a_rename_others_untouched(
    tmp_path: Path, binaries: Binaries, keys: tuple[Path, dict[str, str]]
) -> None:
    tenants_file, key = keys
    run = f"tune-{uuid.uuid4().hex[:8]}"
    errors = ("UNAVAILABLE", "UNAVAILABLE", "INVALID_ARGUMENT", "INTERNAL", "INTERNAL", "INTERNAL")
    env = {"ROUTE_TUNED_TENANT": "globex"}
    with routed_stack(
        tmp_path / "stack", binaries, tenants_file, ["tenant-tuning"], env=env
    ) as stack:
        agents = {
            tenant: Connector(
                tenant, f"{run}-{tenant}", uuid.uuid4().hex, 40 + n, 4000 + n, 5 + n, errors
            )
            for n, tenant in enumerate(("acme", "globex"))
        }
        for agent in agents.values():
            run_connector(stack, key[agent.tenant], agent)
        exported = time.time()
        job = f'job=~"{run}-.*"'
        acme, globex = agents["acme"], agents["globex"]

        # The tuned tenant: rows_sent instead of records_sent, one error series.
        wait_values(
            stack,
            f"connector_rows_sent_total{{{job}}}",
            {("globex",): float(globex.rows)},
            "tenant_id",
        )
        wait_values(
            stack,
            f'connector_errors_total{{{job}, tenant_id="globex"}}',
            {("globex", ""): float(len(errors))},
            "tenant_id",
            "error_type",
        )
        # Every other tenant: the contract's names and labels, exact.
        wait_values(
            stack,
            f'connector_errors_total{{{job}, tenant_id="acme"}}',
            {("acme", "unavailable"): 2.0, ("acme", "rejected"): 1.0, ("acme", "failed"): 3.0},
            "tenant_id",
            "error_type",
        )
        for metric, value in (
            ("connector_records_sent_total", acme.rows),
            ("connector_bytes_sent_total", acme.nbytes),
            ("connector_queries_processed_total", acme.queries),
        ):
            wait_values(
                stack,
                f'{metric}{{{job}, tenant_id="acme"}}',
                {("acme",): float(value)},
                "tenant_id",
            )
        wait_values(
            stack,
            f"connector_bytes_sent_total{{{job}}}",
            {("acme",): float(acme.nbytes), ("globex",): float(globex.nbytes)},
            "tenant_id",
        )

        scraped_since(stack, exported)
        assert query(stack, f'connector_queries_processed_total{{{job}, tenant_id="globex"}}') == []
        assert query(stack, f'connector_records_sent_total{{{job}, tenant_id="globex"}}') == []
        assert query(stack, f'connector_rows_sent_total{{{job}, tenant_id="acme"}}') == []
        assert_owned(query(stack, f"{{{job}}}"), {a.instance: a.tenant for a in agents.values()})


# -- connectors and data agents apart ------------------------------------------------------


def test_connectors_and_data_agents_reach_different_stores(
    tmp_path: Path, binaries: Binaries, keys: tuple[Path, dict[str, str]]
) -> None:
    tenants_file, key = keys
    run = f"kinds-{uuid.uuid4().hex[:8]}"
    with routed_stack(
        tmp_path / "stack",
        binaries,
        tenants_file,
        ["agent-kinds"],
        endpoints=[DATA_AGENTS_ENDPOINT],
    ) as stack:
        data, data_url = stack.start_store(
            binaries.prometheus, "data-agents-prometheus", DATA_AGENTS_ENDPOINT
        )
        stack.wait_ready(data)
        owners: dict[str, str] = {}
        connectors = [
            Connector(tenant, f"{run}-connector", uuid.uuid4().hex, 2 + n, 200 + n)
            for n, tenant in enumerate(("acme", "globex"))
        ]
        for agent in connectors:
            run_connector(stack, key[agent.tenant], agent)
            owners[agent.instance] = agent.tenant
        flows = {"acme": 3, "globex": 4}
        for tenant, count in flows.items():
            instance = uuid.uuid4().hex
            run_data_agent(stack, key[tenant], f"{run}-data-agent", instance, count)
            owners[instance] = tenant
        exported = time.time()

        wait_values(
            stack,
            f'agent_flows_executed_total{{job="{run}-data-agent"}}',
            {(t,): float(n) for t, n in flows.items()},
            "tenant_id",
            url=data_url,
        )
        wait_values(
            stack,
            f'connector_bytes_sent_total{{job="{run}-connector"}}',
            {(a.tenant,): float(a.nbytes) for a in connectors},
            "tenant_id",
        )
        # The last-seen series follow their agent too.
        wait_values(
            stack,
            f'count by (job) (agent_last_seen_seconds{{job=~"{run}-.*"}})',
            {(f"{run}-data-agent",): 2.0},
            "job",
            url=data_url,
        )
        wait_values(
            stack,
            f'count by (job) (connector_last_seen_seconds{{job=~"{run}-.*"}})',
            {(f"{run}-connector",): 2.0},
            "job",
        )
        scraped_since(stack, exported)
        scraped_since(stack, exported, data_url)
        assert query(stack, f'{{job="{run}-data-agent"}}') == []
        assert query(stack, f'{{job="{run}-connector"}}', data_url) == []
        assert query(stack, '{agent_type="connector"}', data_url) == []
        assert_owned(query(stack, f'{{job=~"{run}-.*"}}'), owners)
        assert_owned(query(stack, f'{{job=~"{run}-.*"}}', data_url), owners)


# -- changing a route -----------------------------------------------------------------------------


def test_a_route_applied_by_restarting_the_collector_under_load_loses_no_count(
    tmp_path: Path, binaries: Binaries, keys: tuple[Path, dict[str, str]]
) -> None:
    tenants_file, key = keys
    run = f"apply-{uuid.uuid4().hex[:8]}"
    # The base configuration first; the tenant's endpoint port is reserved already.
    with routed_stack(
        tmp_path / "stack",
        binaries,
        tenants_file,
        [],
        env={"ROUTE_OWN_TENANTS": "acme"},
        endpoints=[TENANT_ENDPOINT],
    ) as stack:
        own, own_url = stack.start_store(binaries.prometheus, "tenant-prometheus", TENANT_ENDPOINT)
        stack.wait_ready(own)
        agents = {
            tenant: CountingAgent(f"{run}-{tenant}", key[tenant], stack.gateway_grpc_endpoint)
            for tenant in ("acme", "globex")
        }
        try:
            for agent in agents.values():
                agent.start()
            records = f'sum by (tenant_id) (connector_records_sent_total{{job=~"{run}-.*"}})'
            wait(
                "both tenants in the shared Prometheus",
                lambda: (
                    True
                    if {k for (k,) in by(query(stack, records), "tenant_id")} == {"acme", "globex"}
                    else None
                ),
            )

            # Apply the route: stop the Collector, start it with the recipe added.
            [collector] = [p for p in stack.processes if p.name == collector_name(0)]
            calls_before = sum(a.calls for a in agents.values())
            stack.stop(collector)  # SIGTERM
            stopped = time.monotonic()
            # Meanwhile the gateway refuses the agents' exports as UNAVAILABLE (they
            # retry, and their next export carries the cumulative totals anyway).
            refused = wait(
                "an export refused while the Collector is down",
                lambda: (
                    outcome_total(
                        gateway_requests(stack.gateway_metrics_url), "collector_unavailable"
                    )
                    or None
                ),
            )
            stack.collector_configs = [RECIPES_DIR / "tenant-endpoint.yaml"]
            stack.wait_ready(stack.start_collector(binaries.collector))
            down = time.monotonic() - stopped
            time.sleep(2.0)  # keep counting on the new route (load, not synchronisation)
            for agent in agents.values():
                agent.stop()
            assert sum(a.calls for a in agents.values()) > calls_before
            for agent in agents.values():
                assert agent.flush(), f"{agent.job}: the final export failed"

            acme, globex = agents["acme"], agents["globex"]
            for metric, attribute in (
                ("connector_records_sent_total", "rows"),
                ("connector_bytes_sent_total", "nbytes"),
            ):
                total = f'sum by (tenant_id) ({metric}{{job=~"{run}-.*"}})'
                wait_values(
                    stack,
                    total,
                    {("acme",): float(getattr(acme, attribute))},
                    "tenant_id",
                    url=own_url,
                )
                wait_values(
                    stack, total, {("globex",): float(getattr(globex, attribute))}, "tenant_id"
                )
            # Gone from the shared Prometheus once the route applies (stale there).
            assert query(stack, '{tenant_id="acme", collector!=""}') == []
            print(
                f"\nroute applied under load: Collector down {down:.1f} s, "
                f"{refused:.0f} exports refused meanwhile; acme's {acme.rows} rows in its "
                f"own store, globex's {globex.rows} in the shared one, both exact"
            )
        finally:
            for agent in agents.values():
                agent.shutdown()
